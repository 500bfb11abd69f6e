"""Models a config's `arch.type` can name."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from base.base_model import BaseModel
from utils.errors import ConfigError, did_you_mean


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


class TorchvisionClassifier(BaseModel):
    """Any torchvision classification model by name (`resnet18`, `mobilenet_v3_small`,
    `efficientnet_b0`, ...) with its last linear layer replaced for `num_classes` and its first
    convolution adapted to `in_channels`. `weights` names pretrained weights as torchvision does
    (`"DEFAULT"`, `"IMAGENET1K_V1"`, `"ResNet18_Weights.IMAGENET1K_V1"`; downloaded into torch's
    cache) or is null for random ones. Returns raw logits: use the `cross_entropy` loss."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3,
                 weights: str | None = None):
        super().__init__()
        from torchvision import models  # slow import: only for this model

        available = models.list_models(module=models)
        if name not in available:
            raise ConfigError(f"name: {name!r} is not a torchvision classification model"
                              f"{did_you_mean(name, available)}")
        if weights is not None:
            _check_weights_name(models.get_model_weights(name), name, weights)
        try:
            self.network = models.get_model(name, weights=weights)
        except OSError as error:  # offline, or the download failed
            raise ConfigError(f"weights: {weights} for {name} could not be downloaded "
                              f"({str(error).strip() or type(error).__name__}); use null "
                              f"offline, or download once where there is internet") from None
        _replace(self.network, nn.Linear, -1,  # the head
                 lambda old: nn.Linear(old.in_features, num_classes))
        if in_channels != 3:
            _replace(self.network, nn.Conv2d, 0, lambda old: _adapted_conv(old, in_channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, in_channels, H, W) -> (B, num_classes)
        return self.network(x)


def _check_weights_name(enum, name: str, weights: str) -> None:
    """`weights` must be `DEFAULT`, a member of `enum` (`IMAGENET1K_V1`) or `Enum.MEMBER`."""
    members = list(dict.fromkeys(["DEFAULT", *enum.__members__]))  # DEFAULT is an alias too
    owner, _, member = weights.rpartition(".")
    if member not in members or owner not in ("", enum.__name__):
        raise ConfigError(f"weights: {weights!r} is not a weights name of {name} (one of: "
                          f"{', '.join(members)}){did_you_mean(member, members)}")


def _replace(model: nn.Module, kind: type, index: int, make) -> None:
    """Replace the `index`-th `kind` layer of `model` (in definition order; -1 the last) by
    `make(old layer)`."""
    found = [(parent, child_name, child) for parent in model.modules()
             for child_name, child in parent.named_children() if isinstance(child, kind)]
    if not found:
        raise ConfigError(f"name: {type(model).__name__} has no {kind.__name__} layer to replace")
    parent, child_name, old = found[index]
    setattr(parent, child_name, make(old))


def _adapted_conv(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`old` for `in_channels` input channels; pretrained filters are averaged over their input
    channels and spread over the new ones (grayscale gets the sum of the RGB filters)."""
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None, old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
                         / in_channels)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new
