"""One training or evaluation step's bookkeeping, shared by the trainer and test.py."""
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from utils.util import MetricTracker


def to_device(device: torch.device, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Copy to `device`; asynchronous from pinned memory when it is a GPU."""
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) for t in tensors)


@torch.no_grad()
def track_batch(tracker: MetricTracker, metric_fns: Sequence[Callable], names: Sequence[str],
                loss: Tensor, output: Tensor, target: Tensor) -> None:
    """Add one batch's loss and metrics to `tracker`, weighted by its size; no host sync."""
    n = target.size(0)
    tracker.update("loss", loss, n)
    for fn, name in zip(metric_fns, names):
        tracker.update(name, fn(output, target), n)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, criterion: Callable,
             metric_fns: Sequence[Callable], names: Sequence[str],
             device: torch.device) -> dict[str, float]:
    """Sample-weighted mean loss and metrics of `model` over `batches`, in eval mode."""
    model.eval()
    tracker = MetricTracker("loss", *names)
    for data, target in batches:
        data, target = to_device(device, data, target)
        output = model(data)
        track_batch(tracker, metric_fns, names, criterion(output, target), output, target)
    return tracker.result()
