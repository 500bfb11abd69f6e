"""k-fold cross-validation: the validation part of a run as one fold of the training data.

`data_loader.args.validation_split: {"fold": k, "folds": K}` (what `train.py --folds K` sets for
its K runs) holds out fold k of K: the K folds are disjoint, cover every training sample once,
are seeded by the config's `seed` alone, and are stratified when the data set's targets are
class labels (each class spread over the folds as evenly as it can be). The test split is not
the data loader's training data, so it is never part of a fold.
"""
import json
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from utils.seeding import derive_seed


def is_fold(validation_split: Any) -> bool:
    return isinstance(validation_split, dict)


def fold_problem(spec: Any, n_samples: int | None = None) -> str | None:
    """What is wrong with a `{"fold": k, "folds": K}` spec, or None (`n_samples` None: what
    can be checked without the data). The message follows `data_loader.args.validation_split: `."""
    if not isinstance(spec, dict) or set(spec) != {"fold", "folds"} or not all(
            isinstance(spec[key], int) and not isinstance(spec[key], bool) for key in spec):
        return (f"expected {{\"fold\": k, \"folds\": K}} with integers, "
                f"got {json.dumps(spec, default=str)}")
    if spec["folds"] < 2:
        return f"folds must be at least 2, got {spec['folds']}"
    if not 1 <= spec["fold"] <= spec["folds"]:
        return f"fold must be from 1 to {spec['folds']}, got {spec['fold']}"
    if n_samples is not None and spec["folds"] > n_samples:
        return f"{spec['folds']} folds of {n_samples} samples leave a fold empty"
    return None


def class_labels(dataset: Dataset) -> torch.Tensor | None:
    """The data set's targets when they are class labels (one integer per sample): torchvision's
    `targets`, a `TensorDataset`'s last tensor; None otherwise (the folds are then not
    stratified)."""
    labels = dataset.tensors[-1] if isinstance(dataset, TensorDataset) and \
        len(dataset.tensors) > 1 else getattr(dataset, "targets", None)
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        return None
    if labels.dim() != 1 or len(labels) != len(dataset) or labels.is_floating_point() or \
            labels.dtype == torch.bool:
        return None
    return labels


def fold_of_each_sample(n_samples: int, folds: int, seed: int,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
    """Which fold (0 to `folds` - 1) each sample is in: a seeded permutation dealt round-robin
    into the folds, class by class when `labels` are given, so each fold gets each class's
    share (within one sample) and the folds' sizes differ by one at most."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 0xF01D))
    order = torch.randperm(n_samples, generator=generator)
    if labels is not None:  # the permutation, grouped by class (stable: random within a class)
        order = order[torch.sort(labels[order], stable=True).indices]
    fold = torch.empty(n_samples, dtype=torch.long)
    fold[order] = torch.arange(n_samples) % folds
    return fold


def fold_indices(n_samples: int, spec: dict, seed: int,
                 labels: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """Training and validation indices of fold `spec["fold"]` of `spec["folds"]`."""
    fold = fold_of_each_sample(n_samples, spec["folds"], seed, labels)
    held_out = fold == spec["fold"] - 1
    return torch.nonzero(~held_out).flatten().tolist(), torch.nonzero(held_out).flatten().tolist()
