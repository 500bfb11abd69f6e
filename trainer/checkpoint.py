"""Checkpoint files: plain data, written atomically, loaded without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(path, weights_only=True)` in a process where this project is not importable.
"""
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from utils.errors import CheckpointError
from utils.files import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "epoch", "state_dict", "config")
# Written when a signal stops a run mid-epoch; removed once a later epoch checkpoint exists.
INTERRUPTED_NAME = "checkpoint-interrupted.pth"
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


def epoch_of(path: Path) -> int | None:
    """N for a file named `checkpoint-epochN.pth`, else None."""
    match = re.fullmatch(r"checkpoint-epoch(\d+)\.pth", path.name)
    return int(match.group(1)) if match else None


def progress_of(path: Path, checkpoint: dict | None = None) -> tuple[int, int]:
    """(completed epochs, optimizer steps into the next one) a checkpoint holds; the name tells
    for `checkpoint-epochN.pth`, the file for others. Later is larger."""
    epoch = epoch_of(path)
    if epoch is not None and checkpoint is None:
        return epoch, 0
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path, mmap=True)
    return checkpoint["epoch"], checkpoint.get("epoch_step", 0)


def find_checkpoint(path: str | os.PathLike, prefer_best: bool = False) -> Path:
    """`path` itself, or for a run folder its newest loadable checkpoint: the latest
    `checkpoint-epochN.pth` or the interrupted one, whichever holds more training. A damaged
    newer file (a run killed in a way no write could survive) is skipped, with a warning.
    With `prefer_best` (evaluating) a run folder means its `model_best.pth` when it has one."""
    path = Path(path)
    if not path.is_dir():
        return path
    if prefer_best and (path / "model_best.pth").is_file():
        return path / "model_best.pth"
    candidates, skipped = [], []
    for file in [*path.glob("checkpoint-epoch*.pth"), path / INTERRUPTED_NAME]:
        if file.is_file() and (epoch_of(file) is not None or file.name == INTERRUPTED_NAME):
            try:
                candidates.append((progress_of(file), file.name == INTERRUPTED_NAME, file))
            except CheckpointError as error:
                skipped.append(str(error))
    for _, _, file in sorted(candidates, reverse=True):
        try:
            load_checkpoint(file, mmap=True)
        except CheckpointError as error:
            skipped.append(str(error))
            continue
        for reason in skipped:
            logging.getLogger("resume").warning("Skipped %s", reason)
        return file
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"{path}: a folder with no loadable checkpoint-epochN.pth or "
                          f"{INTERRUPTED_NAME} in it{detail}")


def is_latest_in_run(path: Path, checkpoint: dict) -> bool:
    """Whether `path` sits in a run folder with no checkpoint holding more training.

    Resuming such a checkpoint continues its run; resuming an older one would overwrite the
    later checkpoints, so it starts a new run folder instead.
    """
    if not (path.parent / "config.json").is_file():
        return False
    mine = progress_of(path, checkpoint)
    others = [p for p in path.parent.glob("checkpoint-*.pth") if p.name != path.name and
              (epoch_of(p) is not None or p.name == INTERRUPTED_NAME)]
    for other in others:
        try:
            if progress_of(other) > mine:
                load_checkpoint(other, mmap=True)
                return False
        except CheckpointError:
            continue  # a damaged file holds nothing to protect
    return True


def prune_checkpoints(folder: Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` `checkpoint-epochN.pth` in `folder`, never
    `protect` (the one this run resumed from) nor `model_best.pth`; the deleted paths."""
    epochs = sorted((epoch_of(p), p) for p in folder.glob("checkpoint-epoch*.pth")
                    if epoch_of(p) is not None)
    protected = protect.resolve() if protect is not None else None
    deleted = []
    for _, path in epochs[:-keep_last]:
        if path.resolve() != protected:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temp files of saves that a killed process left half-written in `folder`."""
    leftovers = [p for p in folder.glob(".*.tmp") if p.is_file()]  # atomic_write's temp names
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def load_model_state(model: nn.Module, state_dict: dict, path: str | os.PathLike,
                     strict: bool = True) -> tuple[int, list[str]]:
    """Load `state_dict` into `model`, its names first aligned with the model's (a wrapper's
    `module.` / `_orig_mod.` prefix dropped, a wrapping model's `network.` added). Strict: a
    mismatch is a `CheckpointError` listing the keys. Not strict: the keys that fit are loaded
    (none fitting is an error). Returns the number of tensors loaded and the mismatches as
    report lines (missing, unexpected, shape mismatch)."""
    own = unwrap_model(model).state_dict()
    state_dict = _aligned(state_dict, own)
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [key for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    shapes = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
              for key in reshaped]
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatch (file vs model)", shapes)) if keys]
    if problems and strict:
        raise CheckpointError(f"{path}: weights do not fit {type(unwrap_model(model)).__name__} "
                              f"({'; '.join(problems)})")
    fitting = {key: value for key, value in state_dict.items()
               if key in own and key not in reshaped}
    if not fitting:
        raise CheckpointError(f"{path}: no tensor fits {type(unwrap_model(model)).__name__} "
                              f"(the file's names are like {next(iter(state_dict), '-')!r}, the "
                              f"model's like {next(iter(own), '-')!r})")
    unwrap_model(model).load_state_dict(fitting, strict=not problems)
    return len(fitting), problems


def _aligned(state_dict: dict, own: dict) -> dict:
    """`state_dict` with a name prefix dropped or added where that makes more names match the
    model's `own`: `module.` (DataParallel), `_orig_mod.` (torch.compile), or the attribute a
    wrapping model keeps the network in (`network.conv1.weight` for `conv1.weight`)."""
    def fits(candidate: dict) -> int:
        return sum(key in own for key in candidate)

    best, best_fit = state_dict, fits(state_dict)
    if best_fit == len(own):
        return state_dict
    samples = list(state_dict)[:5]
    dropped = {key[:key.index(".") + 1] for key in samples if "." in key}
    dropped |= {prefix + "_orig_mod." for prefix in dropped}
    added = {own_key[:-len(key)] for key in samples for own_key in own
             if own_key.endswith("." + key)}
    candidates = [{key.removeprefix(prefix): value for key, value in state_dict.items()}
                  for prefix in dropped]
    candidates += [{prefix + key: value for key, value in state_dict.items()} for prefix in added]
    for candidate in candidates:  # a renaming must make most of the file's names fit
        if fits(candidate) > best_fit and 2 * fits(candidate) >= len(state_dict):
            best, best_fit = candidate, fits(candidate)
    return best


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


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
