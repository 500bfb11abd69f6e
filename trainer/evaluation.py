"""One training or evaluation step's bookkeeping, shared by the trainer and test.py."""
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.errors import UserError
from utils.util import MetricTracker

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


class ConfusionMatrix:
    """Counts of (true class, predicted class) over batches of classifier output, on the
    device: `update` never synchronises. Output that is not (N, C) class scores for (N,)
    integer targets makes it inapplicable (`matrix` is then None)."""

    def __init__(self):
        self.counts: Tensor | None = None  # (true class, predicted class)
        self.applicable = True

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        if not self.applicable:
            return
        scores = isinstance(output, Tensor) and output.dim() == 2 and output.size(1) >= 2
        labels = isinstance(target, Tensor) and target.dim() == 1 and \
            not target.dtype.is_floating_point
        if not scores or not labels or (self.counts is not None and
                                        self.counts.size(0) != output.size(1)):
            self.applicable, self.counts = False, None
            return
        classes = output.size(1)
        if self.counts is None:
            self.counts = torch.zeros(classes, classes, dtype=torch.long, device=output.device)
        known = (target >= 0) & (target < classes)  # not an ignore_index such as -100
        cells = target[known].long() * classes + output.argmax(dim=1)[known]
        self.counts.view(-1).add_(torch.bincount(cells, minlength=classes * classes))

    @property
    def matrix(self) -> list[list[int]] | None:
        """Rows are true classes, columns predicted ones."""
        return self.counts.tolist() if self.counts is not None else None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, criterion: Callable,
             metric_fns: Sequence[Callable], names: Sequence[str], device: torch.device,
             stop: Callable[[], bool] | None = None,
             confusion: ConfusionMatrix | None = None) -> dict[str, float] | None:
    """Sample-weighted mean loss and metrics of `model` over `batches`, in eval mode; None when
    `stop()` turned true after a batch (a stop signal). Under torchrun every process passes its
    own share of the data and gets the means over all of it. `confusion` also counts the
    predictions (test.py; one process)."""
    model.eval()
    tracker = MetricTracker("loss", *names)
    for data, target in batches:
        data, target = to_device(device, data, target)
        output = model(data)
        track_batch(tracker, metric_fns, names, criterion(output, target), output, target)
        if confusion is not None:
            confusion.update(output, target)
        if stop is not None and stop():
            return None
    tracker.all_reduce()  # torchrun: over every process's share of `batches`
    return tracker.result()


@torch.no_grad()
def check_first_batch(model: nn.Module, batches: Iterable, criterion: Callable,
                      metric_fns: Sequence[Callable], device: torch.device) -> Tensor:
    """Put one batch through model, loss and metrics, in eval mode, before anything is written;
    the batch's inputs.

    A config whose pieces do not fit together (10 classes in the data, 5 in the model; a metric
    argument of the wrong type) then fails at once as a `UserError` saying where, instead of
    after the run folder exists. Eval mode draws no random numbers, so exact resume holds.
    """
    was_training = model.training
    model.eval()
    try:
        data, target = to_device(device, *next(iter(batches)))
        output = model(data)
        criterion(output, target)
        for fn in metric_fns:
            fn(output, target)
        return data
    except (RuntimeError, IndexError, TypeError, ValueError, KeyError) as error:
        raise UserError(f"the first batch does not go through model, loss and metrics: "
                        f"{_describe(error)}") from None
    finally:
        model.train(was_training)


def _describe(error: BaseException) -> str:
    """`IndexError: Target 8 is out of bounds (at model/loss.py:12)`: the innermost frame of ours."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    ours = [frame for frame in traceback.extract_tb(error.__traceback__)
            if Path(frame.filename).resolve().is_relative_to(PROJECT_ROOT)
            and "site-packages" not in frame.filename]
    where = f" (at {Path(ours[-1].filename).resolve().relative_to(PROJECT_ROOT)}:{ours[-1].lineno})" \
        if ours else ""
    return f"{type(error).__name__}: {text}{where}"
