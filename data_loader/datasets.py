"""Datasets behind the data loaders."""
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from utils.errors import UserError

DIGITS_FILE = "digits.csv.gz"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 20  # fixed forever: every experiment is tested on the same images


def load_digits(data_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The UCI digits from `data_dir/digits.csv.gz`: images (N, 1, 8, 8) in [0, 1], labels (N,).

    Each CSV row holds 64 pixel values in 0..16 followed by the label.
    """
    path = Path(data_dir) / DIGITS_FILE
    try:
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.float32, ndmin=2)  # 1 row: (1, 65)
    except FileNotFoundError:
        raise UserError(f"data_loader.args.data_dir: {path} not found (data_dir is the folder "
                        f"holding {DIGITS_FILE}; a relative path is taken from the current "
                        f"directory, {Path.cwd()})") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable digits file ({error})") from None
    if table.ndim != 2 or table.shape[1] != 65:
        raise UserError(f"{path}: expected 65 columns (64 pixels and a label), got {table.shape}")
    column = table[:, 64]
    bad = np.flatnonzero((column != np.round(column)) | (column < 0) | (column > 9))
    if bad.size:  # a class label, not a value to truncate (3.7 would silently become 3)
        raise UserError(f"{path}: row {bad[0] + 1}: the label (column 65) must be a digit 0-9, "
                        f"got {column[bad[0]]:g}" + (f" ({bad.size} such rows)" if bad.size > 1
                                                     else ""))
    images = torch.from_numpy(table[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(column.astype(np.int64))
    return images, labels


def digits_dataset(data_dir: str | os.PathLike, training: bool) -> TensorDataset:
    """The training or the test part of a fixed, seeded 80/20 split of the UCI digits."""
    images, labels = load_digits(data_dir)
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    permutation = torch.randperm(len(labels), generator=generator)
    n_test = int(len(labels) * DIGITS_TEST_FRACTION)
    indices = permutation[n_test:] if training else permutation[:n_test]
    indices = indices.sort().values
    return TensorDataset(images[indices], labels[indices])
