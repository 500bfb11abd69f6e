import struct

import numpy as np
import pytest
import torch

from base.base_data_loader import sample_count
from data_loader.data_loaders import (
    Cifar10DataLoader,
    DigitsDataLoader,
    MnistDataLoader,
)
from data_loader.datasets import digits_dataset, load_digits
from tests.conftest import ROOT
from utils.errors import UserError

DATA = ROOT / "data"


def test_shipped_digits_load_as_8x8_images():
    images, labels = load_digits(DATA)
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_train_and_test_split_is_fixed_and_disjoint():
    images, _ = load_digits(DATA)
    train, test = digits_dataset(DATA, True), digits_dataset(DATA, False)
    assert len(train) + len(test) == 1797 and len(test) == 359
    # every image lands in exactly one part (compared as rows: the datasets copy the tensors)
    all_rows = sorted(map(tuple, images.flatten(1).tolist()))
    parts = sorted(map(tuple, torch.cat([train.tensors[0], test.tensors[0]]).flatten(1).tolist()))
    assert parts == all_rows
    assert torch.equal(digits_dataset(DATA, False).tensors[0], test.tensors[0])  # same every time


def test_digits_loader_batches_and_test_split():
    loader = DigitsDataLoader(str(DATA), batch_size=64, validation_split=0.1, seed=1)
    data, target = next(iter(loader))
    assert data.shape == (64, 1, 8, 8) and target.dtype == torch.int64
    assert loader.n_samples + sample_count(loader.split_validation()) == 1438
    test = DigitsDataLoader(str(DATA), batch_size=500, shuffle=False, training=False)
    assert sample_count(test) == 359


def test_missing_digits_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"^data_loader\.args\.data_dir: .*digits.csv.gz not found"):
        DigitsDataLoader(str(tmp_path), batch_size=8)


def test_a_one_sample_digits_file_loads_and_its_empty_test_split_is_named(tmp_path):
    import gzip

    with gzip.open(tmp_path / "digits.csv.gz", "wt") as file:
        file.write(",".join(["3"] * 64 + ["7"]) + "\n")
    loader = DigitsDataLoader(str(tmp_path), batch_size=8)
    data, target = next(iter(loader))
    assert data.shape == (1, 1, 8, 8) and target.tolist() == [7]
    with pytest.raises(UserError, match=r"^data_loader: the data set \(TensorDataset\) has no "
                                        r"samples; .*false is the test split"):
        DigitsDataLoader(str(tmp_path), batch_size=8, training=False)  # 20% of 1 sample


@pytest.mark.parametrize("labels, message", [
    (["3.7", "1"], "row 1: the label (column 65) must be a digit 0-9, got 3.7"),
    (["1", "12", "-1"], "row 2: the label (column 65) must be a digit 0-9, got 12 (2 such rows)"),
])
def test_a_label_that_is_not_a_digit_is_named_not_truncated(tmp_path, labels, message):
    import gzip

    with gzip.open(tmp_path / "digits.csv.gz", "wt") as file:
        file.writelines(",".join(["3"] * 64 + [label]) + "\n" for label in labels)
    with pytest.raises(UserError) as raised:
        load_digits(tmp_path)
    assert str(raised.value) == f"{tmp_path / 'digits.csv.gz'}: {message}"


def write_idx(path, array: np.ndarray, magic_type: int = 0x08) -> None:
    """An IDX file as MNIST ships it: magic, big-endian sizes, then unsigned bytes."""
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root, n_train: int = 12, n_test: int = 5) -> None:
    """The four MNIST files torchvision looks for, so that it never downloads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_loader_reads_idx_files_without_downloading(tmp_path):
    write_tiny_mnist(tmp_path)
    loader = MnistDataLoader(str(tmp_path), batch_size=4, validation_split=2, download=True)
    data, target = next(iter(loader))
    assert data.shape == (4, 1, 28, 28) and data.dtype == torch.float32
    assert loader.n_samples == 10 and sample_count(loader.split_validation()) == 2
    test = MnistDataLoader(str(tmp_path), batch_size=5, shuffle=False, training=False)
    assert next(iter(test))[1].tolist() == [0, 1, 2, 3, 4]


def test_mnist_missing_offline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="MNIST is not there"):
        MnistDataLoader(str(tmp_path), batch_size=4, download=False)


def write_tiny_cifar10(root, per_batch: int = 4, n_test: int = 6) -> None:
    """The CIFAR-10 python batches torchvision reads (pickled dicts, as the dataset ships)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [(index + i) % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_cifar10_loader_reads_the_python_batches_without_downloading(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    write_tiny_cifar10(tmp_path)
    # torchvision checks the real files' md5 sums; tiny test files cannot match them
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    loader = Cifar10DataLoader(str(tmp_path), batch_size=4, validation_split=4, download=True)
    data, target = next(iter(loader))
    assert data.shape == (4, 3, 32, 32) and data.dtype == torch.float32
    assert loader.n_samples == 16 and sample_count(loader.split_validation()) == 4
    test = Cifar10DataLoader(str(tmp_path), batch_size=6, shuffle=False, training=False)
    assert next(iter(test))[1].tolist() == [5, 6, 7, 8, 9, 0]
    assert test.dataset.classes[0] == "airplane"  # test.py names the classes with these


def test_cifar10_missing_offline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="CIFAR10 is not there"):
        Cifar10DataLoader(str(tmp_path), batch_size=4, download=False)
