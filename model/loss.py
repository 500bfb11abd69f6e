"""Losses a config's `loss` can name: `loss(output, target) -> scalar tensor` (a batch mean)."""
import torch.nn.functional as F
from torch import Tensor


def nll_loss(output: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood of log-probabilities `output` (B, C) for class indices (B,)."""
    return F.nll_loss(output, target)


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of raw logits `output` (B, C) for class indices (B,)."""
    return F.cross_entropy(output, target)


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of `output` against a float `target` of the same shape, e.g. (B,)."""
    return F.mse_loss(output, target)
