"""Tabular regression from a CSV file with named columns: the diabetes data shipped in
`data/diabetes.csv.gz` (442 patients, 10 baseline variables, a disease progression score one
year later). No trainer code: the default step fits `(features, target)` batches."""
import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from base import BaseDataLoader, BaseModel
from utils.errors import UserError

TEST_FRACTION = 0.2
SPLIT_SEED = 442  # fixed forever: every experiment is tested on the same patients


def read_csv(path: str | os.PathLike, columns: Sequence[str], key_path: str) -> np.ndarray:
    """The named `columns` of a CSV file with a header row (gzip when it ends in .gz), as
    float32 (N, len(columns)); a missing file or column is a one-line `UserError`."""
    path = Path(path)
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as file:
            header = file.readline().strip().split(",")
            table = np.loadtxt(file, delimiter=",", dtype=np.float32, ndmin=2)
    except FileNotFoundError:
        raise UserError(f"data_loader.args.data_dir: {path} not found") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable CSV file ({error})") from None
    missing = [name for name in columns if name not in header]
    if missing:
        raise UserError(f"{key_path}: {path.name} has no column {missing[0]!r} (its columns: "
                        f"{', '.join(header)})")
    return table[:, [header.index(name) for name in columns]]


class CsvDataLoader(BaseDataLoader):
    """`(features, target)` batches from the named columns of a CSV file: a fixed, seeded
    80/20 split into training and test rows; features standardised with the training rows'
    mean and standard deviation (so the test rows never leak into them)."""

    def __init__(self, data_dir: str, file: str, features: list[str], target: str,
                 batch_size: int, shuffle: bool = True, validation_split: float | int | dict = 0.0,
                 num_workers: int = 0, training: bool = True, seed: int = 0,
                 on_device: bool = False):
        table = read_csv(Path(data_dir) / file, [*features, target], "data_loader.args")
        inputs, targets = torch.from_numpy(table[:, :-1]), torch.from_numpy(table[:, -1])
        permutation = torch.randperm(len(table), generator=torch.Generator().manual_seed(
            SPLIT_SEED))
        n_test = int(len(table) * TEST_FRACTION)
        train_rows = permutation[n_test:].sort().values
        test_rows = permutation[:n_test].sort().values
        mean, std = inputs[train_rows].mean(0), inputs[train_rows].std(0).clamp_min(1e-8)
        rows = train_rows if training else test_rows
        dataset = TensorDataset((inputs[rows] - mean) / std, targets[rows])  # (N, F), (N,)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed,
                         on_device=on_device)


class TabularRegressor(BaseModel):
    """An MLP from `in_features` standardised features to one value per sample, (B,), in the
    target's units: `target_mean + target_std * net(x)` keeps the net's outputs near 1."""

    def __init__(self, in_features: int, hidden: int = 32, target_mean: float = 0.0,
                 target_std: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))
        self.target_mean, self.target_std = target_mean, target_std

    def forward(self, features: Tensor) -> Tensor:
        return self.target_mean + self.target_std * self.net(features).squeeze(1)  # (B,)
