"""The checkpoint file format: plain data, written atomically, loaded without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(path, weights_only=True)` in a process where this project is not importable.
"""
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import torch

from utils.errors import CheckpointError
from utils.files import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "epoch", "state_dict", "config")
def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to `path` so that a crash at any instant leaves a loadable file there."""
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict:
    """Load a checkpoint of this template; anything else is a `CheckpointError` naming the file.

    Loads with `weights_only=True`: a file holding arbitrary pickled objects is refused, never run.
    """
    path = Path(path)
    checkpoint = _torch_load(path, "checkpoint file", "checkpoint",
                             "not a checkpoint of this template (it holds pickled objects, which "
                             "are refused: loading them could run code)",
                             map_location=map_location, mmap=mmap)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this template (holds a "
                              f"{type(checkpoint).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this template (missing "
                              f"{', '.join(missing)})")
    problem = _content_problem(checkpoint)
    if problem:
        raise CheckpointError(f"{path}: not a checkpoint of this template ({problem})")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format_version']} is newer "
                              f"than this template reads ({FORMAT_VERSION}); update the template")
    return checkpoint


def _torch_load(path: Path, missing: str, kind: str, refused: str, **load_args):
    """`torch.load(path, weights_only=True)` of a `kind` of file; a missing, unreadable,
    foreign or damaged file is a `CheckpointError` naming it (`missing`: what is not there,
    `refused`: why a file of pickled objects is not loaded)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {missing}")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from None
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a {kind} (not a file written by torch.save)")
    damaged = _failed_record(path)
    if damaged:  # torch.load reads the records without checking their CRC-32
        raise CheckpointError(f"{path}: damaged {kind} ({damaged}); it cannot be trusted")
    try:
        return torch.load(path, weights_only=True, **load_args)
    except pickle.UnpicklingError:  # weights_only refused an object that is not plain data
        raise CheckpointError(f"{path}: {refused}") from None
    except Exception as error:  # noqa: BLE001 (why: untrusted input; every failure is the file's)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable {kind} (truncated or damaged: "
                              f"{reason})") from None


def _failed_record(path: Path) -> str | None:
    """Why the zip archive at `path` is damaged — a record whose bytes fail the CRC-32 written
    with it (a flipped bit, a torn copy) — or None. Reads the whole file once, in less time
    than torch.load takes (docs/checkpoints.md)."""
    try:
        with zipfile.ZipFile(path) as archive:
            record = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as error:
        return f"unreadable archive: {error}"
    return f"record {record} fails its checksum" if record is not None else None


def _count(value) -> bool:  # a count a run can reach: not 10**30 epochs
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 53


def _number(value) -> bool:  # a best value: finite, or the ±inf of "nothing yet"
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _optional(kind: type):
    return lambda value: value is None or isinstance(value, kind)


def _scores(value) -> bool:
    return value is None or isinstance(value, dict) and all(
        isinstance(k, str) and _number(v) for k, v in value.items())


# The plain-data schema of a checkpoint: key -> (check, what it must be). Keys a checkpoint of
# an older format lacks are not checked; values are checked before anything is built from them.
_SCHEMA = {
    "format_version": (_count, "a count"), "arch": (lambda v: isinstance(v, str), "a name"),
    "epoch": (_count, "a count"),
    "epoch_step": (_count, "a count"), "global_step": (_count, "a count"),
    "not_improved_count": (_count, "a count"),
    "best_epoch": (lambda v: v is None or _count(v), "a count or null"),
    "monitor_best": (_number, "a number (not NaN)"), "best_log": (_scores, "names to numbers"),
    "state_dict": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) and t.layout == torch.strided
        for k, t in v.items()), "names to (dense) tensors"),
    "config": (lambda v: isinstance(v, dict), "a dict"),
    "optimizer": (_optional(dict), "a state dict or null"),
    "lr_scheduler": (_optional(dict), "a state dict or null"),
    "scaler": (_optional(dict), "a state dict or null"),
    "epoch_state": (_optional(dict), "a dict or null"),
    "stop_reason": (_optional(str), "a string or null"),
    "rng_state": (_optional(dict), "generator states"),
    "rng_states": (lambda v: v is None or isinstance(v, list) and all(
        isinstance(s, dict) for s in v), "a list of generator states or null"),
    "param_group_names": (_optional((list, dict)), "lists of parameter names"),
}
_MAX_DEPTH = 64  # a config nested deeper is not one a person wrote


def _content_problem(checkpoint: dict) -> str | None:
    """What is wrong with the values of a loaded checkpoint, or None."""
    for key, (check, wanted) in _SCHEMA.items():
        if key in checkpoint and not check(checkpoint[key]):
            return f"{key} must be {wanted}"
    epoch = checkpoint["epoch"]
    for key in ("best_epoch", "not_improved_count"):
        if (checkpoint.get(key) or 0) > epoch:
            return f"{key} {checkpoint[key]} is past its epoch {epoch}"
    if checkpoint.get("epoch_step") and not isinstance(checkpoint.get("epoch_state"), dict):
        return f"epoch_step {checkpoint['epoch_step']} without the epoch's state (epoch_state)"
    if _depth(checkpoint["config"]) > _MAX_DEPTH:
        return f"config is nested more than {_MAX_DEPTH} levels deep"
    return None


def _depth(value) -> int:
    """How deeply lists and dicts nest in `value` (without recursion: no RecursionError)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= _MAX_DEPTH:
                stack.extend((child, depth + 1) for child in
                             (item.values() if isinstance(item, dict) else item))
    return deepest


def read_weights(path: str | os.PathLike) -> dict:
    """The weights in `path`: a checkpoint of this template, or a state dict (`torch.save(
    model.state_dict())`, torchvision's files).
    Loaded with `weights_only=True`; anything else is a `CheckpointError` naming the file."""
    loaded = _torch_load(Path(path), "weights file", "weights file",
                         "holds pickled objects, which are refused (loading them could run "
                         "code); save model.state_dict() instead", map_location="cpu")
    state = loaded.get("state_dict") if isinstance(loaded, dict) and \
        isinstance(loaded.get("state_dict"), dict) else loaded
    if not isinstance(state, dict) or not state or \
            not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                    for key, value in state.items()):
        raise CheckpointError(f"{path}: neither a checkpoint of this template nor a state dict "
                              f"(names to tensors)")
    return state
