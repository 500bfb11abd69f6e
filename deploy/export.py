"""What `export.py` does: a trained model exported with torch.export (a `.pt2` file) or to ONNX
(a `.onnx` file), its batch dimension dynamic, and verified before it is written — the saved
program's outputs on a real batch and on a smaller one equal the eager model's within a
tolerance."""
import contextlib
import importlib.util
import io
import logging
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from step.batches import batch_inputs, call_model, map_tensors
from utils.errors import UserError
from utils.files import atomic_write

SUFFIXES = {"torch.export": ".pt2", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
SMALL_BATCH = 3  # the second check's samples: a batch size other than the example's


@dataclass(frozen=True)
class Tolerance:
    """An output is close to the eager model's when |exported - eager| <= atol + rtol * |eager|,
    elementwise (torch.isclose); the defaults suit float32."""

    atol: float = 1e-5
    rtol: float = 1e-4

    def __str__(self) -> str:
        return f"{self.atol:g} + {self.rtol:g} x |eager|"


class ExportMismatch(Exception):
    """The exported program's outputs differ from the eager model's; nothing was written."""


def check_packages(format_name: str) -> None:
    """A one-line `UserError` when `format_name` needs packages this environment lacks."""
    if format_name != "onnx":
        return
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs the packages {', '.join(ONNX_PACKAGES)} (not "
                        f"installed: {', '.join(missing)}): pip install {' '.join(ONNX_PACKAGES)}")


def export_path(checkpoint: Path, output: str | None, format_name: str) -> Path:
    """`--output`, or `<checkpoint stem>.pt2` / `.onnx` next to the checkpoint."""
    suffix = SUFFIXES[format_name]
    if output is None:
        return checkpoint.with_name(checkpoint.stem + suffix)
    path = Path(output)
    if path.suffix != suffix:
        raise UserError(f"--output {output}: --format {format_name} writes a {suffix} file")
    if not path.parent.is_dir():
        raise UserError(f"--output {output}: no folder {path.parent}")
    return path


def model_arguments(unpack: Callable, batch) -> tuple[tuple, dict]:
    """The model's positional and keyword arguments in `batch` (its target, which `unpack`
    finds, left out), as the default step passes them (`step.batches.call_model`)."""
    return call_model(lambda *args, **kwargs: (args, kwargs), batch_inputs(batch, unpack))


def example_inputs(unpack: Callable, batch) -> list[tuple[tuple, dict]]:
    """The inputs of the checks: those of `batch` (the export's example) and of its first
    SMALL_BATCH samples (another batch size: the dimension must be dynamic)."""
    args, kwargs = model_arguments(unpack, batch)
    sizes = {tensor.size(0) for tensor in _tensors((args, kwargs)) if tensor.dim()}
    if not sizes:
        raise UserError("the batch holds no tensor with a batch dimension to export the model on")
    size = min(sizes)
    if size < 2:
        raise UserError(f"the first batch has {size} sample; export makes the batch size dynamic "
                        f"from a batch of 2 or more (a larger data_loader.args.batch_size, or an "
                        f"--input file of more samples)")
    small = min(SMALL_BATCH, size - 1)
    return [(args, kwargs), map_tensors((args, kwargs), lambda tensor: tensor[:small]
                                        if tensor.dim() else tensor)]


def export_model(model: nn.Module, format_name: str, examples: list[tuple[tuple, dict]],
                 path: Path, tolerance: Tolerance) -> None:
    """Export `model` (eval mode, on the CPU) on the first of `examples`, check the saved
    program against the model on each of them, one line each, and only then write it to
    `path`. An `ExportMismatch` when one is out of `tolerance`."""
    with torch.no_grad():
        expected = [_tensors(model(*args, **kwargs)) for args, kwargs in examples]
    program = exported_program(model, *examples[0])
    data, run = (_torch_export_file if format_name == "torch.export" else _onnx_file)(program)
    for (args, kwargs), eager in zip(examples, expected):
        got = run(args, kwargs)
        difference, worst = compare(eager, got, tolerance)
        size = _tensors((args, kwargs))[0].size(0)
        print(f"{format_name}: a batch of {size}: max |exported - eager| = {difference:.3g} "
              f"(tolerance {tolerance}): {'ok' if worst is None else 'too far'}", flush=True)
        if worst is not None:
            raise ExportMismatch(f"the exported model's output {worst} on a batch of {size} "
                                 f"differs from the eager model's by up to {difference:.3g} "
                                 f"(tolerance {tolerance}); {path} not written")
    atomic_write(path, lambda file: file.write(data))
    print(f"Exported to {path} ({len(data) / 2 ** 20:.2f} MiB)")


def exported_program(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """`model` through torch.export with dim 0 of every input tensor one dynamic batch size;
    a one-line `UserError` naming what it refuses."""
    batch = torch.export.Dim("batch")

    def dynamic(value):
        if not isinstance(value, (Tensor, Mapping, tuple, list)):
            return None
        return map_tensors(value, lambda tensor: {0: batch} if tensor.dim() else None)

    shapes = {name: dynamic(value) for name, value in kwargs.items()} if kwargs else \
        tuple(dynamic(value) for value in args)
    try:
        with _quiet_exporters():
            return torch.export.export(model, args, kwargs, dynamic_shapes=shapes)
    except Exception as error:  # noqa: BLE001 (why: the model ran eagerly; what torch.export refuses in it is the user's to change)
        raise UserError(f"the model cannot be exported: {export_problem(error)}") from None


def export_problem(error: BaseException) -> str:
    """One line for why an export failed: the first line of the error (its summary when torch
    wraps one) and, where it is known, the user's source line that caused it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the ONNX exporter's colours
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines[:-1]:
        lines = lines[lines.index("## Exception summary") + 1:]
    # its first sentence: the rest is where to read more
    reason = re.split(r"(?<=[.!])\s+(?=[A-Z(])", lines[0] if lines else "")[0] or \
        type(error).__name__
    detail = next((line[2:].split(". ")[0] for line in lines[1:] if line.startswith("- ")), None)
    if detail and reason.endswith("!"):  # "Constraints violated (batch)!": the first says which
        reason += f" {detail}"
    if detail and "specialized it to be a constant" in detail:
        reason += " (every input's dim 0 is the batch size: the model must take any, e.g. " \
                  "x.view(x.size(0), -1), not x.view(64, -1))"
    if "data-dependent" in reason:
        reason += " (a Python branch or number taken from a tensor's values: torch.where or " \
                  "torch.cond keep it in the graph)"
    where = _source_line(text, error)
    return f"{reason}{f' — at {where}' if where else ''}"


def _source_line(text: str, error: BaseException) -> str | None:
    """`file:line in function: code` of the user's code that raised: the last one the message
    quotes, else the innermost frame of the traceback outside torch."""
    quoted = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(\S[^\n]*)', text)
    if quoted:
        file, line, function, code = quoted[-1]
        return f"{file}:{line} in {function}: {code.strip()}"
    torch_dir = str(Path(torch.__file__).parent)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(torch_dir) and frame.filename != __file__]
    if not frames:
        return None
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"


def compare(eager: list[Tensor], got: list[Tensor], tolerance: Tolerance) -> tuple[float, int | None]:
    """The largest |got - eager| over all outputs, and the index of the first output out of
    `tolerance` (None: all within it)."""
    if len(got) != len(eager):
        raise ExportMismatch(f"the exported model gives {len(got)} outputs, the eager model "
                             f"{len(eager)}")
    largest, worst = 0.0, None
    for index, (expected, value) in enumerate(zip(eager, got)):
        value = value.to(expected.dtype)
        if value.shape != expected.shape:
            raise ExportMismatch(f"the exported model's output {index} has the shape "
                                 f"{tuple(value.shape)}, the eager model's {tuple(expected.shape)}")
        if expected.numel():
            largest = max(largest, (value.double() - expected.double()).abs().max().item())
        close = torch.isclose(value, expected, rtol=tolerance.rtol, atol=tolerance.atol,
                              equal_nan=True)
        if worst is None and not bool(close.all()):
            worst = index
    return largest, worst


def _torch_export_file(program: torch.export.ExportedProgram):
    """The `.pt2` file's bytes, and the model loaded back from them (`torch.export.load`)."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()
    loaded = torch.export.load(io.BytesIO(data)).module()

    def run(args: tuple, kwargs: dict) -> list[Tensor]:
        with torch.no_grad():
            return _tensors(loaded(*args, **kwargs))
    return data, run


def _onnx_file(program: torch.export.ExportedProgram):
    """The `.onnx` file's bytes (torch.onnx's dynamo exporter), and a function that runs them
    in onnxruntime on the CPU."""
    import numpy
    import onnxruntime

    try:
        with _quiet_exporters():
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    except Exception as error:  # noqa: BLE001 (why: an operator ONNX cannot express is the model's)
        raise UserError(f"the model cannot be exported to ONNX: {export_problem(error)}") \
            from None
    data = onnx_program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]

    def run(args: tuple, kwargs: dict) -> list[Tensor]:
        # the graph's inputs are the input tensors in the order torch.export flattened them
        feeds = dict(zip(names, (tensor.numpy() for tensor in _tensors((args, kwargs)))))
        return [torch.from_numpy(numpy.asarray(output)) for output in session.run(None, feeds)]
    return data, run


def _tensors(value) -> list[Tensor]:
    """The tensors inside `value`, in order (depth first, a dict's in its order)."""
    found = []
    map_tensors(value, found.append)
    return found


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters hushed: a refused export prints the traced graph on stderr and logs
    advice before it raises (the one line naming the problem says what matters), and the ONNX
    optimizer logs each of its passes; the checks that follow say whether it worked."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
