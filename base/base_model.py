"""The interface every model implements."""
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from logger.model_summary import summarize


class BaseModel(nn.Module, ABC):
    """An `nn.Module` whose printout ends with its trainable parameter count, with a summary
    table (`summary`)."""

    @abstractmethod
    def forward(self, *inputs):
        """The forward pass."""

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def summary(self, input_size: Sequence[int], batch_size: int = 2) -> str:
        """A table of every module (name, type, output shape, parameters, trainable) for a
        batch of zeros of shape `(batch_size, *input_size)`, gathered with forward hooks that
        are removed afterwards; then the trainable, frozen and buffer totals."""
        parameter = next(self.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        return "\n".join(summarize(self, torch.zeros(batch_size, *input_size, device=device)))

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_trainable_parameters():,}"
