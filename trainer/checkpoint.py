"""Checkpoint files: plain data, written atomically, loaded without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(path, weights_only=True)` in a process where this project is not importable.
"""
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from utils.errors import CheckpointError
from utils.util import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "epoch", "state_dict", "config")
_MAX_LISTED = 5


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to `path` so that a crash at any instant leaves a loadable file there."""
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict:
    """Load a checkpoint of this template; anything else is a `CheckpointError` naming the file.

    Loads with `weights_only=True`: a file holding arbitrary pickled objects is refused, never run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from None
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a checkpoint (not a file written by torch.save)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights_only refused an object that is not plain data
        raise CheckpointError(f"{path}: not a checkpoint of this template (it holds pickled "
                              f"objects, which are refused: loading them could run code)") from None
    except Exception as error:  # noqa: BLE001 (why: untrusted input; every failure is the file's)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged: "
                              f"{reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this template (holds a "
                              f"{type(checkpoint).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this template (missing "
                              f"{', '.join(missing)})")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format_version']} is newer "
                              f"than this template reads ({FORMAT_VERSION}); update the template")
    return checkpoint


def epoch_of(path: Path) -> int | None:
    """N for a file named `checkpoint-epochN.pth`, else None."""
    match = re.fullmatch(r"checkpoint-epoch(\d+)\.pth", path.name)
    return int(match.group(1)) if match else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself, or for a run folder its newest `checkpoint-epochN.pth`."""
    path = Path(path)
    if not path.is_dir():
        return path
    epochs = [(epoch_of(p), p) for p in path.glob("checkpoint-epoch*.pth") if epoch_of(p)]
    if not epochs:
        raise CheckpointError(f"{path}: a folder with no checkpoint-epochN.pth in it")
    return max(epochs)[1]


def is_latest_in_run(path: Path, epoch: int) -> bool:
    """Whether `path` sits in a run folder with no checkpoint later than `epoch`.

    Resuming such a checkpoint continues its run; resuming an older one would overwrite the
    later checkpoints, so it starts a new run folder instead.
    """
    if not (path.parent / "config.json").is_file():
        return False
    later = [p for p in path.parent.glob("checkpoint-epoch*.pth") if (epoch_of(p) or 0) > epoch]
    return not later


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def load_model_state(model: nn.Module, state_dict: dict, path: str | os.PathLike) -> None:
    """Load `state_dict` into `model`; a mismatch is a `CheckpointError` listing the keys."""
    own = unwrap_model(model).state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
                for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatch (checkpoint vs model)", reshaped)) if keys]
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {type(unwrap_model(model)).__name__} "
                              f"({'; '.join(problems)})")
    unwrap_model(model).load_state_dict(state_dict)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
