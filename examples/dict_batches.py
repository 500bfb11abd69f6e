"""Dict batches and a model with two inputs: each digit image comes with a small vector of
side features, and batches are dicts `{"image": (B, 1, 8, 8), "features": (B, 4), "label": (B,)}`,
as HuggingFace-style collate functions give. No trainer code: the default step takes the
target from the "label" key and calls `model(image=..., features=...)`."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from base import BaseDataLoader, BaseModel
from data_loader.datasets import digits_dataset


class DigitsWithFeatures(Dataset):
    """The digits as dicts; `features`: the ink in each quadrant of the image. `targets` (the
    name torchvision's data sets use) lets `train.py --folds K` stratify the folds."""

    def __init__(self, data_dir: str, training: bool):
        self.images, self.targets = digits_dataset(data_dir, training).tensors
        quadrants = self.images.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, 1, 2, 2, 4, 4)
        self.features = quadrants.sum(dim=(-1, -2)).flatten(1) / 16.0  # (N, 4)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "features": self.features[index],
                "label": self.targets[index]}


class DigitsDictDataLoader(BaseDataLoader):
    """`DigitsWithFeatures` in batches (the default collate function stacks dicts key by key)."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True,
                 validation_split: float | int | dict = 0.0, num_workers: int = 0,
                 training: bool = True, seed: int = 0):
        dataset = DigitsWithFeatures(data_dir, training)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, seed=seed)


class ImageAndFeatures(BaseModel):
    """A small CNN on the image, a linear layer on the side features, joined: log-probabilities
    (B, num_classes)."""

    def __init__(self, num_classes: int = 10, num_features: int = 4, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.side = nn.Linear(num_features, width)
        self.head = nn.Linear(width * 16 + width, num_classes)

    def forward(self, image: Tensor, features: Tensor) -> Tensor:
        pictures = F.max_pool2d(F.relu(self.conv(image)), 2).flatten(1)  # (B, width * 4 * 4)
        side = F.relu(self.side(features))                                # (B, width)
        return F.log_softmax(self.head(torch.cat([pictures, side], dim=1)), dim=1)
