"""The interface every model implements."""
from abc import ABC, abstractmethod

from torch import nn


class BaseModel(nn.Module, ABC):
    """An `nn.Module` whose printout ends with its trainable parameter count."""

    @abstractmethod
    def forward(self, *inputs):
        """The forward pass."""

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_trainable_parameters():,}"
