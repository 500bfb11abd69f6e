"""What goes into the user's step and what comes out: a batch of any structure moved to the
device, its samples counted, split into the model's inputs and the target; and the step's
returned loss, output, target and loss parts, checked (`step_output`).

A batch may be a tensor or any nesting of tuples, lists, dicts, namedtuples and dataclasses
holding tensors (and other values, which stay as they are).
"""
import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from utils.errors import UserError, did_you_mean

# Dict keys the default step takes for the target, in this order (else `trainer.args.target_key`).
TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def map_tensors(batch: Any, function: Callable[[Tensor], Any]) -> Any:
    """`batch` with `function` applied to every tensor inside it; the structure (and any value
    that is not a tensor) kept."""
    if isinstance(batch, Tensor):
        return function(batch)
    # map and partial, not comprehensions: no extra Python frame per call on the step's path
    inner = functools.partial(map_tensors, function=function)
    if isinstance(batch, Mapping):
        mapped = dict(zip(batch.keys(), map(inner, batch.values())))
        return mapped if type(batch) is dict else type(batch)(mapped)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*map(inner, batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map(inner, batch))
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{field.name: map_tensors(
            getattr(batch, field.name), function) for field in dataclasses.fields(batch)
            if field.init})
    return batch


def move_to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor inside it on `device` (asynchronously from pinned memory)."""
    # non_blocking to CUDA: asynchronous from pinned memory, an ordinary copy from any other
    # (elsewhere, as to MPS, a non-blocking copy is not safe)
    return map_tensors(batch, functools.partial(Tensor.to, device=device,
                                                non_blocking=device.type == "cuda"))


def detached(value: Any) -> Any:
    """`value` with every tensor inside it detached from the graph."""
    return map_tensors(value, Tensor.detach)


def batch_inputs(batch: Any, unpack: Callable) -> Any:
    """The model's inputs in `batch`: its inputs when `unpack` (the trainer's) finds a target
    in it, else all of it (new data, without labels)."""
    try:
        inputs, _ = unpack(batch)
    except UserError:  # no target in it: all of it is input
        inputs = batch
    return inputs


def call_model(model: Callable, inputs: Any) -> Any:
    """The model on the default step's inputs: `model(**inputs)` for a dict, `model(*inputs)`
    for a tuple (several inputs), else `model(inputs)`."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple) and not hasattr(inputs, "_fields"):
        return model(*inputs)
    return model(inputs)


def first_tensor(batch: Any) -> Tensor | None:
    """The first tensor inside `batch` (depth first, in order), or None."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        values = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        values = [getattr(batch, field.name) for field in dataclasses.fields(batch)]
    else:
        return None
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def leading_size(batch: Any) -> int:
    """The samples in `batch`: dim 0 of its first tensor."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor) and \
            batch[0].dim():
        return batch[0].size(0)  # the common case, found without a search
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise UserError(f"cannot count the samples of a batch of {describe(batch)}: it holds no "
                        f"tensor with a batch dimension; override batch_size(batch) in the "
                        f"trainer")
    return tensor.size(0)


def split_batch(batch: Any, target_key: str | None = None) -> tuple[Any, Any]:
    """`(inputs, target)` by the default step's convention:

    - a tuple or list `(data, target)`; `(x1, x2, ..., target)` gives the inputs `(x1, x2, ...)`;
    - a dict: the target under `target_key`, else the first of `TARGET_KEYS` present; the
      other entries are the inputs (a dict: the model is called as `model(**inputs)`).
    A `UserError` says what the batch is and what to do when neither fits.
    """
    if isinstance(batch, Mapping):
        keys = [target_key] if target_key else TARGET_KEYS
        key = next((key for key in keys if key in batch), None)
        if key is None:
            wanted = f"the key {target_key!r} (trainer.args.target_key)" \
                f"{did_you_mean(target_key, list(batch))}" if target_key else \
                (f"a target key ({', '.join(TARGET_KEYS)})")
            raise UserError(f"batches are a dict with keys {list(batch)}, without {wanted}; "
                            f"name the target key with -o trainer.args.target_key=KEY, or "
                            f"override training_step(batch) in a Trainer subclass")
        inputs = {name: value for name, value in batch.items() if name != key}
        return inputs, batch[key]
    if isinstance(batch, (tuple, list)) and not hasattr(batch, "_fields") and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise UserError(f"batches are {describe(batch)}; the default training step takes (inputs, "
                    f"target) pairs or dicts with a target key ({', '.join(TARGET_KEYS)}): "
                    f"override training_step(batch) in a Trainer subclass")


def describe(value: Any) -> str:
    """A short description of a batch: `a dict with keys ['image', 'label']`, `a tensor
    (64, 10)`."""
    if isinstance(value, Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {list(value)}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"a {type(value).__name__} with fields {list(value._fields)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(describe(item) for item in value[:4])
        return f"a {type(value).__name__} of {len(value)} ({items})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"a {type(value).__name__} dataclass"
    return f"a {type(value).__name__}"


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
