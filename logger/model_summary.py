"""A model summary: every module's type, output shape and parameters, gathered with forward
hooks during one forward pass and removed afterwards."""
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _shape(output) -> str:
    """`(64, 32, 8, 8)`; for a tuple or list of tensors the first one's and `...`."""
    if isinstance(output, Tensor):
        return str(tuple(output.shape))
    if isinstance(output, (tuple, list)) and output:
        first = _shape(output[0])
        return f"{first}, ..." if len(output) > 1 and first != "-" else first
    return "-"


def _calls(shapes: list[str] | None) -> str:
    """`(64, 128)`; `-` for a module not called; the last shape and the count when called more
    than once (a dropout used after two layers)."""
    if not shapes:
        return "-"
    return shapes[-1] if len(shapes) == 1 else f"{shapes[-1]} ({len(shapes)} calls)"


@torch.no_grad()
def summarize(model: nn.Module, inputs, call: Callable[[nn.Module, object], object] | None = None
              ) -> list[str]:
    """The summary table of `model` run on `inputs` (a batch: a tensor, or what `call(model,
    inputs)` feeds the model) in eval mode, as lines: name, type, output shape, parameters and
    whether they train, for every submodule; then the totals of trainable and frozen parameters
    and of buffers. The model's mode is restored and no hook is left on it."""
    outputs: dict[str, list[str]] = {}  # a module's output shapes, a call each

    def record(name: str, output) -> None:
        outputs.setdefault(name, []).append(_shape(output))

    handles = [module.register_forward_hook(
        lambda _module, _inputs, output, name=name: record(name, output))
        for name, module in model.named_modules()]  # "" is the model itself
    was_training = model.training
    try:
        model.eval()
        call(model, inputs) if call is not None else model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    rows = [("module", "type", "output shape", "parameters", "trains")]
    for name, module in model.named_modules():
        if not name:
            continue
        own = list(module.parameters(recurse=False))
        count = sum(p.numel() for p in own)
        trains = {p.requires_grad for p in own}
        rows.append((name, type(module).__name__, _calls(outputs.get(name)), f"{count:,}" if own
                     else "", "" if not own else "yes" if trains == {True} else
                     "no" if trains == {False} else "partly"))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = ["  ".join(cell.rjust(width) if column == 3 else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"Input {_input_shapes(inputs)} -> output {_calls(outputs.get(''))}")
    lines.append(totals_line(model))
    return lines


def _input_shapes(inputs) -> str:
    """`(2, 1, 8, 8)`; `image (2, 1, 8, 8), features (2, 4)` for a dict of inputs."""
    if isinstance(inputs, dict):
        return ", ".join(f"{name} {_shape(value)}" for name, value in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return ", ".join(_shape(value) for value in inputs)
    return _shape(inputs)


def totals_line(model: nn.Module) -> str:
    """`Parameters: 151,306 trainable, 0 frozen; buffers: 0 values`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return f"Parameters: {trainable:,} trainable, {frozen:,} frozen; buffers: {buffers:,} values"
