"""What a training or validation step returns, checked: the loss, what the metrics receive,
and the other scalars to log (loss parts)."""
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from utils.errors import UserError

# Keys of a step's dict that are not logged as loss parts.
RESERVED = ("loss", "output", "target")


@dataclass
class StepOutput:
    """`loss`: the scalar to minimise (with its graph, in training). `output`, `target`: what the
    metrics and test.py's class report receive (None when the step gives none). `parts`: other
    0-d tensors to log as sample-weighted epoch means (`"recon"`, `"kl"`)."""

    loss: Tensor
    output: Any = None
    target: Any = None
    parts: dict[str, Tensor] = field(default_factory=dict)


def step_output(result: Any, method: str = "training_step") -> StepOutput:
    """`result` of `method` as a `StepOutput`; a `UserError` saying what is wrong with it.
    Reads only shapes: no host sync."""
    if isinstance(result, Tensor):
        result = {"loss": result}
    if not isinstance(result, Mapping):
        raise UserError(f"{method} returned {type(result).__name__}; it must return the loss (a "
                        f"scalar tensor) or a dict with \"loss\" (and optionally \"output\", "
                        f"\"target\" and loss parts)")
    if "loss" not in result:
        raise UserError(f"{method} returned a dict without \"loss\" (its keys: {list(result)})")
    loss = result["loss"]
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else \
            type(loss).__name__
        raise UserError(f"{method} returned as \"loss\" {got}; it must be a scalar tensor "
                        f"(reduce it, e.g. with .mean())")
    parts = {}
    for name, value in result.items():
        if name in RESERVED:
            continue
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or \
                name.startswith("val_"):
            raise UserError(f"{method} returned the key {name!r}: a logged value's name is a "
                            f"word of letters, digits and '_' (not starting with val_)")
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else \
                type(value).__name__
            raise UserError(f"{method} returned as {name!r} {got}; values besides \"output\" "
                            f"and \"target\" are logged and must be scalar tensors")
        parts[name] = value.reshape(())
    return StepOutput(loss.reshape(()), result.get("output"), result.get("target"), parts)
