"""The checkpoint file format: plain data, written atomically, loaded without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(path, weights_only=True)` in a process where this project is not importable.
"""
import os
import pickle
import zipfile
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
    try:
        return torch.load(path, weights_only=True, **load_args)
    except pickle.UnpicklingError:  # weights_only refused an object that is not plain data
        raise CheckpointError(f"{path}: {refused}") from None
    except Exception as error:  # noqa: BLE001 (why: untrusted input; every failure is the file's)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable {kind} (truncated or damaged: "
                              f"{reason})") from None


def _content_problem(checkpoint: dict) -> str | None:
    """What is wrong with the values of a loaded checkpoint's required keys, or None."""
    def counter(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not counter(checkpoint["format_version"]) or not counter(checkpoint["epoch"]) or \
            not counter(checkpoint.get("epoch_step", 0)):
        return "format_version, epoch and epoch_step must be counts"
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or \
            not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        return "state_dict must map names to tensors"
    if not isinstance(checkpoint["config"], dict):
        return "config must be a dict"
    return None


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
