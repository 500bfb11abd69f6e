"""Data loaders a config's `data_loader.type` can name.

Each takes the data loader's usual arguments plus `training` (False: the test split, as
`test.py` asks for) and `seed` (given by `train.py` from the config's top-level `seed`).
"""
from base.base_data_loader import BaseDataLoader, download_once
from data_loader.datasets import digits_dataset
from utils.errors import UserError


class DigitsDataLoader(BaseDataLoader):
    """The UCI handwritten digits shipped in `data/` (8x8 grayscale, 10 classes), offline."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int | dict = 0.0, num_workers: int = 0,
                 training: bool = True,
                 seed: int = 0, on_device: bool = False):
        self.data_dir = data_dir
        dataset = digits_dataset(data_dir, training)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed,
                         on_device=on_device)


class MnistDataLoader(BaseDataLoader):
    """torchvision's MNIST (28x28 grayscale), downloaded into `data_dir` when `download` is true."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int | dict = 0.0, num_workers: int = 0,
                 training: bool = True,
                 seed: int = 0, download: bool = True):
        from torchvision import (  # slow import: only for this loader
            datasets,
            transforms,
        )

        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])
        self.data_dir = data_dir
        dataset = _torchvision_dataset(datasets.MNIST, data_dir, training, download, transform)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed)


class Cifar10DataLoader(BaseDataLoader):
    """torchvision's CIFAR-10 (32x32 colour, 10 classes), downloaded into `data_dir` when
    `download` is true; training batches are augmented (random crop with padding 4, horizontal
    flip) when `augment` is true."""

    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int | dict = 0.0, num_workers: int = 0,
                 training: bool = True,
                 seed: int = 0, download: bool = True, augment: bool = True):
        from torchvision import (  # slow import: only for this loader
            datasets,
            transforms,
        )

        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] \
            if training and augment else []
        transform = transforms.Compose([*steps, transforms.ToTensor(),
                                        transforms.Normalize(self.MEAN, self.STD)])
        self.data_dir = data_dir
        dataset = _torchvision_dataset(datasets.CIFAR10, data_dir, training, download, transform)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed)


def _torchvision_dataset(dataset_class, data_dir: str, training: bool, download: bool,
                         transform):
    """`dataset_class(data_dir, train=training, ...)`; under torchrun rank 0 downloads while
    the others wait, then they read its files. Missing and not downloadable: a `UserError`."""
    def build(download_now: bool):
        try:
            return dataset_class(data_dir, train=training, download=download_now,
                                 transform=transform)
        except (RuntimeError, OSError) as error:  # not there and not downloadable (offline)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"{data_dir}: {dataset_class.__name__} is not there and could not be "
                            f"downloaded ({reason})") from None

    return download_once(build, download, dataset_class.__name__)
