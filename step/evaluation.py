"""What test.py reports besides the means (the confusion matrix), and the messages the
first-batch check gives."""
import traceback
from pathlib import Path

import torch
from torch import Tensor

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfusionMatrix:
    """Counts of (true class, predicted class) over batches of classifier output, on the
    device: `update` never synchronises. Output that is not (N, C) class scores for (N,)
    integer targets makes it inapplicable (`matrix` is then None)."""

    def __init__(self, keys: tuple | None = None):
        """`keys`: the (output, target) keys of a step with dict outputs (two heads) whose
        head the matrix counts; None: the whole output and target."""
        self.counts: Tensor | None = None  # (true class, predicted class)
        self.applicable = True
        self.keys = keys
        self.skipped: str | None = None  # why it does not apply, when the output is a container

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        if not self.applicable:
            return
        if self.keys is not None and isinstance(output, dict) and isinstance(target, dict) and \
                self.keys[0] in output and self.keys[1] in target:
            output, target = output[self.keys[0]], target[self.keys[1]]
        elif isinstance(output, (dict, list, tuple)):
            self.skipped = f"the step's output is a {type(output).__name__}, not one (N, C) " \
                           f"tensor of class scores"
            self.applicable = False
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


def broadcast_warning(output, target) -> str | None:
    """A warning when a float target and the output differ in shape but broadcast to a larger
    shape (a (B, 1) output against a (B,) target: (B, B) in mse_loss), else None."""
    if not isinstance(output, Tensor) or not isinstance(target, Tensor) or \
            not target.is_floating_point() or output.shape == target.shape:
        return None
    try:
        shape = torch.broadcast_shapes(output.shape, target.shape)
    except RuntimeError:
        return None
    if shape.numel() <= max(output.numel(), target.numel()):
        return None
    return (f"Warning: the output {tuple(output.shape)} and the target {tuple(target.shape)} "
            f"differ in shape and broadcast to {tuple(shape)} in an element-wise loss such as "
            f"mse_loss, which then compares every output with every target; make them the "
            f"same shape (e.g. output.squeeze(1) in the model or training_step)")


def describe_error(error: BaseException) -> str:
    """`IndexError: Target 8 is out of bounds (at model/loss.py:12, from trainer/trainer.py:60)`:
    the innermost frame of the project's code, and the outermost (the user's step that called
    it) when that is another line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    ours = [f"{Path(frame.filename).resolve().relative_to(PROJECT_ROOT)}:{frame.lineno}"
            for frame in traceback.extract_tb(error.__traceback__)
            if Path(frame.filename).resolve().is_relative_to(PROJECT_ROOT)
            and "site-packages" not in frame.filename
            and Path(frame.filename).resolve().relative_to(PROJECT_ROOT).parts[0] not in MACHINERY]
    where = f" (at {ours[-1]}{f', from {ours[0]}' if ours[0] != ours[-1] else ''})" \
        if ours else ""
    return f"{type(error).__name__}: {text}{where}"


# The template's own rooms: an error is located in the user's code that called them.
MACHINERY = ("step", "base", "runs", "builder", "config", "utils", "logger")
