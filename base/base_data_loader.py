"""A DataLoader with a seeded validation split and an epoch-determined shuffle order."""
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate

from utils.errors import ConfigError


def derive_seed(*entropy: int) -> int:
    """A 64-bit seed that depends on every number in `entropy` (and on nothing else)."""
    words = [int(value) % 2**64 for value in entropy]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


class EpochSampler(Sampler[int]):
    """Yields `indices`, shuffled by a permutation that depends only on (seed, epoch, pass).

    `set_epoch(e)` makes the order of epoch e reproducible whatever ran before it in this
    process, which is what exact resume needs. Each further pass over the sampler within one
    epoch (iteration-based training) draws a new permutation.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool, seed: int):
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._pass = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._pass = 0

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self._pass))
            order = order[torch.randperm(len(order), generator=generator)]
        self._pass += 1
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.indices)


def validation_split_problem(validation_split: Any, n_samples: int | None = None) -> str | None:
    """What is wrong with a `validation_split` (a fraction in [0, 1) or a sample count smaller
    than the data set), or None; `n_samples` None checks what can be checked without the data.
    The message follows `data_loader.args.validation_split: `."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        return (f"expected a fraction in [0, 1) or a sample count, "
                f"got {json.dumps(validation_split)}")
    if isinstance(validation_split, int):
        if validation_split < 0 or (n_samples is not None and validation_split >= n_samples):
            upper = n_samples if n_samples is not None else "the data set size"
            size = f" (the data set has {n_samples} samples)" if n_samples is not None else ""
            return f"expected a sample count in [0, {upper}){size}, got {validation_split}"
    elif not 0.0 <= validation_split < 1.0:
        return f"expected a fraction in [0, 1), got {validation_split}"
    if n_samples is not None and n_samples - _n_valid(n_samples, validation_split) < 1:
        return f"{validation_split} leaves no training data (the data set has {n_samples} samples)"
    return None


def _n_valid(n_samples: int, validation_split: float | int) -> int:
    if isinstance(validation_split, int):
        return validation_split
    return int(n_samples * validation_split)


def split_indices(n_samples: int, validation_split: float | int,
                  seed: int) -> tuple[list[int], list[int]]:
    """Training and validation indices, a seeded random split of `range(n_samples)`.

    `validation_split` is a fraction in [0, 1) or a sample count smaller than `n_samples`.
    Raises a `ConfigError` for anything out of range or leaving no training data.
    """
    problem = validation_split_problem(validation_split, n_samples)
    if problem:
        raise ConfigError(f"data_loader.args.validation_split: {problem}")
    n_valid = _n_valid(n_samples, validation_split)
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x5011))  # split, not shuffle
    permutation = torch.randperm(n_samples, generator=generator).tolist()
    return sorted(permutation[n_valid:]), sorted(permutation[:n_valid])


class BaseDataLoader(DataLoader):
    """A DataLoader over `dataset` minus a validation part that `split_validation()` returns.

    Randomness comes from generators of its own, seeded from `seed`: building or iterating it
    never touches the global RNG. Call `set_epoch(e)` before each epoch (the trainer does) so the
    shuffle order and worker seeds of epoch e depend only on (seed, e).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool,
                 validation_split: float | int, num_workers: int,
                 collate_fn: Callable = default_collate, seed: int = 0, **loader_kwargs):
        self.validation_split = validation_split
        self.shuffle = shuffle
        self.seed = seed
        train_indices, valid_indices = split_indices(len(dataset), validation_split, seed)
        self.n_samples = len(train_indices)
        self._valid_sampler = EpochSampler(valid_indices, shuffle=False, seed=seed) \
            if valid_indices else None
        self._init_kwargs = {"dataset": dataset, "batch_size": batch_size,
                             "collate_fn": collate_fn, "num_workers": num_workers, **loader_kwargs}
        # the generator only seeds workers here (the sampler shuffles); keeps the global RNG out
        super().__init__(sampler=EpochSampler(train_indices, shuffle, seed),
                         generator=torch.Generator().manual_seed(derive_seed(seed)),
                         **self._init_kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(self.seed, epoch))

    def split_validation(self) -> DataLoader | None:
        """A loader over the validation part, in a fixed order; None when there is none."""
        if self._valid_sampler is None:
            return None
        return DataLoader(sampler=self._valid_sampler,
                          generator=torch.Generator().manual_seed(derive_seed(self.seed, -1)),
                          **self._init_kwargs)
