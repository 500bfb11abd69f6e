"""The files of a run folder: which checkpoint is the newest, which are stale, what a killed
run left behind. `train.py` / `test.py` resolve `-r` with these; `CheckpointSaver` writes them."""
import json
import logging
import os
import re
import shlex
from datetime import datetime
from pathlib import Path

from config.command_line import Resume
from runs.manifest import bound_log_dir, made_here, read_manifest
from utils.checkpoint import load_checkpoint
from utils.errors import CheckpointError, UserError

# Written when a signal stops a run mid-epoch; removed once a later epoch checkpoint exists.
INTERRUPTED_NAME = "checkpoint-interrupted.pth"
BEST_NAME = "model_best.pth"  # the best epoch's checkpoint (test.py's default in a run folder)
# The temp names atomic_write (`.<name>.<random>.tmp`) and atomic_link (`.<name>.<pid>.link.tmp`)
# give the files a run writes.
_TEMP_NAME = re.compile(r"\.(checkpoint-epoch\d+\.pth|checkpoint-interrupted\.pth|"
                        r"model_best\.pth|config\.json|manifest\.json)\.[\w.]+\.tmp")


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


def resolve_resume(path: str, with_config: bool, evaluating: bool = False) -> Resume:
    """What `-r path` means. Without `-c` (`with_config` false) the checkpoint's own config is
    read, and resuming the newest checkpoint of a run continues that run (an older one branches
    off); a damaged file is then an error at once. With `-c` (fine-tuning, or test.py's config
    override) a problem with the file is reported with the config's own problems.
    `evaluating` (test.py): a run folder means its `model_best.pth`."""
    if not with_config:
        resume = find_checkpoint(path, prefer_best=evaluating)
        checkpoint = load_checkpoint(resume, mmap=True)
        continue_run = not evaluating and is_latest_in_run(resume, checkpoint)
        return Resume(resume, checkpoint["config"], continue_run,
                      log_dir=bound_log_dir(resume.parent) if continue_run else None)
    try:
        resume = find_checkpoint(path, prefer_best=evaluating)
        load_checkpoint(resume, mmap=True)
    except UserError as error:
        return Resume(Path(path), problems=[f"-r {error}"])
    return Resume(resume)


def find_checkpoint(path: str | os.PathLike, prefer_best: bool = False) -> Path:
    """`path` itself, or for a run folder its newest loadable checkpoint: the latest
    `checkpoint-epochN.pth` or the interrupted one, whichever holds more training. A damaged
    newer file (a run killed in a way no write could survive) is skipped, with a warning.
    With `prefer_best` (evaluating) a run folder means its `model_best.pth` when it has one."""
    path = Path(path)
    if not path.is_dir():
        return path
    if prefer_best and (path / BEST_NAME).is_file():
        return path / BEST_NAME
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
    later checkpoints, so it starts a new run folder instead — as does one in a folder the
    template did not make there (a folder that merely holds a config.json, a copy of a run).
    """
    if not made_here(path.parent):  # a folder the template did not make is never written into
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
    """Delete the temp files of this template's saves (`atomic_write` / `atomic_link` names of
    the files a run writes) that a killed writer left in `folder`; other files, also other
    `.tmp` files, are never touched. Call it only while holding the folder's `RunLock`: then
    no live process is writing them."""
    leftovers = [path for path in folder.glob(".*.tmp")
                 if path.is_file() and _TEMP_NAME.fullmatch(path.name)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def resume_command(path: str | os.PathLike) -> str:
    """The command that resumes from `path`, shell-quoted (a path with spaces, or a save_dir
    with `$(...)` from someone else's checkpoint, pastes safely); under torchrun the torchrun
    command, with as many processes on one machine."""
    quoted = shlex.quote(str(path))
    world, local = os.environ.get("WORLD_SIZE", "1"), os.environ.get("LOCAL_WORLD_SIZE")
    if world == "1":
        return f"python train.py -r {quoted}"
    if local == world:
        return f"torchrun --nproc_per_node={world} train.py -r {quoted}"
    return f"torchrun <your torchrun options> train.py -r {quoted}"


def keep_edited_config(folder: Path, stored: dict) -> Path | None:
    """Before a continued run rewrites `folder`'s config.json: when the file differs from the
    config the checkpoint stored (`stored`) and from every config a session of the run wrote
    (a resume killed before its first checkpoint wrote its own) — edited by hand — move it
    aside (`config.json.edited-<time>`, never overwritten silently) and return where it went."""
    path = folder / "config.json"
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        current = None  # unreadable: an edit too
    sessions = (read_manifest(folder) or {}).get("sessions") or []
    written = [session.get("config") for session in sessions if isinstance(session, dict)]
    if current == stored or current in written:
        return None
    aside = path.with_name(f"config.json.edited-{datetime.now():%Y%m%d-%H%M%S}")
    os.replace(path, aside)
    return aside
