"""base/folds.py: k-fold cross-validation splits — disjoint, covering, stratified, seeded."""
import pytest
import torch
from torch.utils.data import TensorDataset

from base.base_data_loader import loader_args_problems, split_indices
from base.folds import class_labels, fold_of_each_sample


def folds_of(n: int, folds: int, seed: int = 0, labels=None) -> list[tuple[list, list]]:
    return [split_indices(n, {"fold": k, "folds": folds}, seed, labels)
            for k in range(1, folds + 1)]


@pytest.mark.parametrize("n, folds", [(10, 2), (101, 5), (7, 7)])
def test_folds_are_disjoint_and_cover_every_sample_once(n, folds):
    splits = folds_of(n, folds)
    held_out = [index for _, valid in splits for index in valid]
    assert sorted(held_out) == list(range(n))  # each sample in exactly one fold
    for train, valid in splits:
        assert sorted(train + valid) == list(range(n)) and not set(train) & set(valid)
    sizes = [len(valid) for _, valid in splits]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_stratified_by_class_and_seeded():
    labels = torch.tensor([0] * 53 + [1] * 31 + [2] * 16)[torch.randperm(100)]
    splits = folds_of(100, 5, seed=3, labels=labels)
    for _, valid in splits:
        counts = torch.bincount(labels[valid], minlength=3).tolist()
        assert all(abs(count - share) < 1 for count, share in zip(counts, [53 / 5, 31 / 5, 16 / 5]))
    assert folds_of(100, 5, seed=3, labels=labels) == splits  # the same seed: the same folds
    assert folds_of(100, 5, seed=4, labels=labels) != splits


def test_a_rare_class_is_spread_one_sample_per_fold():
    labels = torch.tensor([1] * 5 + [0] * 95)[torch.randperm(100)]
    for seed in range(5):
        fold = fold_of_each_sample(100, 5, seed=seed, labels=labels)
        assert sorted(fold[labels == 1].tolist()) == [0, 1, 2, 3, 4]


def test_class_labels_are_found_only_where_they_are_class_labels():
    images = torch.zeros(6, 2)
    assert class_labels(TensorDataset(images, torch.arange(6) % 2)).tolist() == [0, 1] * 3
    assert class_labels(TensorDataset(images, torch.rand(6))) is None  # regression targets
    assert class_labels(TensorDataset(images)) is None

    class Targets(torch.utils.data.Dataset):
        targets = [3, 1, 2]

        def __len__(self):
            return 3
    assert class_labels(Targets()).tolist() == [3, 1, 2]


@pytest.mark.parametrize("split, message", [
    ({"fold": 0, "folds": 5}, "fold must be from 1 to 5, got 0"),
    ({"fold": 1, "folds": 1}, "folds must be at least 2, got 1"),
    ({"fold": 1}, 'expected {"fold": k, "folds": K} with integers, got {"fold": 1}'),
    ({"fold": "1", "folds": 3},
     'expected {"fold": k, "folds": K} with integers, got {"fold": "1", "folds": 3}'),
])
def test_a_bad_fold_is_one_line_naming_the_key(split, message):
    assert loader_args_problems({"validation_split": split}) == [
        f"data_loader.args.validation_split: {message}"]


def test_more_folds_than_samples_is_refused_when_the_data_is_known():
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="5 folds of 4 samples leave a fold empty"):
        split_indices(4, {"fold": 1, "folds": 5}, 0)
