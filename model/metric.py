"""Metrics a config's `metrics` can name: `metric(output, target) -> 0-d tensor`, a batch mean.

They return tensors, not floats, so that the trainer can accumulate them on the device without
a host sync per batch. The trainer weights each batch by its size.
"""
import torch
from torch import Tensor


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of samples whose highest-scoring class is the target; `output` (B, C)."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: Tensor, target: Tensor, k: int = 3) -> Tensor:
    """Fraction of samples whose target is among the `k` highest-scoring classes."""
    top_k = torch.topk(output, min(k, output.size(1)), dim=1).indices   # (B, k)
    return (top_k == target.unsqueeze(1)).any(dim=1).float().mean()
