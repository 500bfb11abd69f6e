"""Models a config's `arch.type` can name."""
import torch.nn.functional as F
from torch import Tensor, nn

from base.base_model import BaseModel


class DigitsModel(BaseModel):
    """A small CNN for the 8x8 UCI digits: two 3x3 convolutions, a pool and two linear layers."""

    def __init__(self, num_classes: int = 10, channels: int = 32, dropout: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(2 * channels * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:              # (B, 1, 8, 8)
        x = F.relu(self.conv1(x))                        # (B, C, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)       # (B, 2C, 4, 4)
        x = self.dropout(x.flatten(1))
        x = self.dropout(F.relu(self.fc1(x)))            # (B, 128)
        return F.log_softmax(self.fc2(x), dim=1)         # (B, num_classes) log-probabilities


class LeNet(BaseModel):
    """LeNet-style CNN for 28x28 MNIST images."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:                           # (B, 1, 28, 28)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))                    # (B, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))   # (B, 20, 4, 4)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))              # (B, 50)
        return F.log_softmax(self.fc2(x), dim=1)                      # (B, num_classes)
