"""`NoisyDigitsDataLoader`: the digits with random noise drawn in `__getitem__` (in the loader's
worker processes when it has them), so that the generators' seeding shows in the results.
Importing this module makes `data_loader.data_loaders.NoisyDigitsDataLoader` a name a config
may give (tests/slow_train.py imports it; so do tests that train such a config in-process)."""
import torch

import data_loader.data_loaders as module_data


class NoisyDigitsDataLoader(module_data.DigitsDataLoader):
    """The digits with noise drawn in `__getitem__`, i.e. in the worker processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset.__class__ = NoisyTensorDataset


class NoisyTensorDataset(torch.utils.data.TensorDataset):
    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        return image + 0.1 * torch.randn_like(image), label


NoisyDigitsDataLoader.__module__ = "data_loader.data_loaders"  # a config may name it
module_data.NoisyDigitsDataLoader = NoisyDigitsDataLoader


class NoisyBatchesDigitsDataLoader(module_data.DigitsDataLoader):
    """The digits with noise drawn for whole batches: an `InMemoryDataset` whose
    `batch_transform` runs where the batches are made (on the device with `on_device`)."""

    def __init__(self, *args, **kwargs):
        from base.in_memory import InMemoryDataset

        super().__init__(*args, **kwargs)
        self.dataset.__class__ = InMemoryDataset
        self.dataset.batch_transform = add_noise


def add_noise(batch: list) -> list:
    images, *rest = batch
    return [images + 0.1 * torch.randn_like(images), *rest]


NoisyBatchesDigitsDataLoader.__module__ = "data_loader.data_loaders"
module_data.NoisyBatchesDigitsDataLoader = NoisyBatchesDigitsDataLoader
