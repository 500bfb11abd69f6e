"""Data loaders a config's `data_loader.type` can name.

Each takes the data loader's usual arguments plus `training` (False: the test split, as
`test.py` asks for) and `seed` (given by `train.py` from the config's top-level `seed`).
"""
from base.base_data_loader import BaseDataLoader
from data_loader.datasets import digits_dataset
from utils import distributed
from utils.errors import UserError


class DigitsDataLoader(BaseDataLoader):
    """The UCI handwritten digits shipped in `data/` (8x8 grayscale, 10 classes), offline."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int = 0.0, num_workers: int = 0, training: bool = True,
                 seed: int = 0):
        self.data_dir = data_dir
        dataset = digits_dataset(data_dir, training)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed)


class MnistDataLoader(BaseDataLoader):
    """torchvision's MNIST (28x28 grayscale), downloaded into `data_dir` when `download` is true."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int = 0.0, num_workers: int = 0, training: bool = True,
                 seed: int = 0, download: bool = True):
        from torchvision import datasets, transforms  # slow import: only for this loader

        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])
        self.data_dir = data_dir
        # under torchrun rank 0 downloads while the others wait, then they read its files
        with distributed.all_or_none("getting MNIST"):
            if distributed.is_main():
                dataset = _mnist(datasets, data_dir, training, download, transform)
        if not distributed.is_main():
            dataset = _mnist(datasets, data_dir, training, False, transform)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed)


def _mnist(datasets, data_dir: str, training: bool, download: bool, transform):
    try:
        return datasets.MNIST(data_dir, train=training, download=download, transform=transform)
    except (RuntimeError, OSError) as error:  # not there and not downloadable (offline)
        raise UserError(f"{data_dir}: MNIST is not there and could not be downloaded "
                        f"({(str(error).strip().splitlines() or [type(error).__name__])[0]})") \
            from None
