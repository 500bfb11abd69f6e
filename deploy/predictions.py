"""What `predict.py` reads and writes: the inputs of a `--input` file in batches, and the
predictions as CSV (one value, or one row of scores, per sample) or as a `.pt` file."""
import csv
import io
from pathlib import Path

import torch
from torch import Tensor

from utils.errors import UserError
from utils.files import atomic_write


def input_batches(path: Path, config) -> list:
    """The samples of `path` (torch.save of a tensor (N, ...) or a dict of tensors of N rows)
    in batches of the data loader's `batch_size`; a dict batch is the model's arguments."""
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (why: any unreadable file is the user's)
        raise UserError(f"--input {path}: not a file torch.load reads ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") \
            from None
    rows = _rows(data, path)
    size = int((config["data_loader"].get("args") or {}).get("batch_size", 64))
    if isinstance(data, Tensor):
        return [data[start:start + size] for start in range(0, rows, size)]
    return [{key: value[start:start + size] for key, value in data.items()}
            for start in range(0, rows, size)]


def _rows(data, path: Path) -> int:
    """The samples in a `--input` file's data; a one-line `UserError` for anything else."""
    if isinstance(data, Tensor) and data.dim() >= 1 and len(data):
        return len(data)
    if isinstance(data, dict) and data and all(isinstance(value, Tensor) and value.dim() >= 1
                                               for value in data.values()):
        lengths = {key: len(value) for key, value in data.items()}
        if len(set(lengths.values())) == 1 and next(iter(lengths.values())):
            return next(iter(lengths.values()))
        raise UserError(f"--input {path}: its tensors have different numbers of rows "
                        f"({', '.join(f'{key}: {n}' for key, n in lengths.items())})")
    raise UserError(f"--input {path}: expected a tensor (N, ...) of N samples or a dict of such "
                    f"tensors, got {type(data).__name__}")


def is_classifier(trainer) -> bool:
    """Whether the model was trained on class labels: the data loader's targets are integers."""
    try:
        _, target = trainer.unpack(next(iter(trainer.data_loader)))
    except (UserError, StopIteration, TypeError):
        return False
    return isinstance(target, Tensor) and target.dim() == 1 and not target.is_floating_point()


def predictions_path(checkpoint: Path, output: str | None) -> Path:
    """`--output`, or `<checkpoint>.predictions` next to it (its suffix chosen when written)."""
    if output is not None:
        path = Path(output)
        if path.suffix not in (".csv", ".pt"):
            raise UserError(f"--output {output}: expected a .csv or .pt file name")
        if not path.parent.is_dir():
            raise UserError(f"--output {output}: no folder {path.parent}")
        return path
    return checkpoint.with_name(f"{checkpoint.stem}.predictions")


def write_predictions(outputs: list, path: Path, classifier: bool) -> Path:
    """The batches' outputs, joined in order: a CSV when each sample's is one value or one
    row of scores (and `path` allows it), else a `.pt` file of what the step returned."""
    joined = _join(outputs)
    table = isinstance(joined, Tensor) and joined.dim() in (1, 2) and path.suffix != ".pt"
    if path.suffix == ".csv" and not table:
        raise UserError(f"--output {path}: the predictions are {_describe(joined)}, not one "
                        f"value or one row of scores per sample; write them as .pt")
    if not table:
        path = path if path.suffix == ".pt" else path.with_name(f"{path.name}.pt")
        atomic_write(path, lambda file: torch.save(joined, file))
        return path
    path = path if path.suffix == ".csv" else path.with_name(f"{path.name}.csv")
    scores = joined if joined.dim() == 2 else joined.unsqueeze(1)
    header = ["index"]
    if classifier and scores.size(1) > 1:
        header.append("class")
    header += ["prediction"] if scores.size(1) == 1 else \
        [f"output_{column}" for column in range(scores.size(1))]
    rows = []
    for index, row in enumerate(scores.tolist()):
        cells = [index]
        if classifier and scores.size(1) > 1:
            cells.append(int(scores[index].argmax()))
        rows.append(cells + row)

    def write(file):
        text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(rows)
        text.flush()
        text.detach()  # the binary file stays open for atomic_write to sync

    atomic_write(path, write)
    return path


def _join(outputs: list):
    """Per-batch outputs (tensors, or dicts / tuples of them) joined along the samples."""
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.cat([output.reshape(-1) if output.dim() == 0 else output
                          for output in outputs])
    if isinstance(first, dict):
        return {key: _join([output[key] for output in outputs]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_join([output[i] for output in outputs]) for i in range(len(first)))
    return outputs


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor {tuple(value.shape)}"
    return f"a {type(value).__name__}"
