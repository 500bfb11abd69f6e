"""Which checkpoint files a run writes, and when — the policy, apart from the loop (as timm's
`CheckpointSaver`): `checkpoint-epochN.pth` every `save_period` epochs and at the last (or an
early-stopped) epoch; `model_best.pth` on every improving epoch, a hard link to that epoch's
file when there is one; `checkpoint-interrupted.pth` when a signal stops a run mid-epoch, gone
once a later epoch file exists; with `keep_last` only the newest epoch files.

Under torchrun every process calls it (a checkpoint gathers from all of them); rank 0 writes.
"""
import copy
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from runs.run_folder import (
    BEST_NAME,
    INTERRUPTED_NAME,
    prune_checkpoints,
    resume_command,
)
from utils import distributed
from utils.checkpoint import save_checkpoint
from utils.errors import WriteError
from utils.files import atomic_link

State = Callable[[], dict]  # builds the checkpoint's content when (and only when) one is written


class CheckpointSaver:
    """Writes a run's checkpoints into `folder()` (read at each write: the run folder is named
    when the run starts); `protect`: a checkpoint pruning must keep (the one resumed from).

    With `background` an epoch's checkpoint is written beside training: its state is copied
    (host memory) at the save point, and a thread writes it — temp file, fsync, rename, as
    always — while the next epoch trains. At most one write is in flight (the next save waits
    for it); `finish` waits for it at the end of training and at a stop, and a write that
    failed is its one-line `WriteError` there or at the next save, the previous checkpoint
    intact.
    """

    def __init__(self, folder: Callable[[], Path], save_period: int = 1,
                 keep_last: int | None = None, protect: Path | None = None,
                 logger: logging.Logger | None = None, background: bool = False,
                 resumed: bool = True):
        self.folder = folder
        self.save_period = save_period
        self.keep_last = keep_last
        self.protect = protect
        # `protect` is this run's own earlier state (a resume), not a fine-tuning's weights
        self.resumable = protect if resumed else None
        self.logger = logger or logging.getLogger("trainer")
        self.background = background
        self.last_saved: Path | None = None  # the newest epoch checkpoint written
        self._writing: threading.Thread | None = None  # the write in flight (rank 0)
        self._failure: BaseException | None = None  # how it failed

    def is_due(self, epoch: int, last_epoch: int, stopping: bool) -> bool:
        """Whether `epoch` gets its `checkpoint-epochN.pth`."""
        return epoch % self.save_period == 0 or epoch == last_epoch or stopping

    def save(self, epoch: int, state: State, epoch_file: bool = True,
             best: bool = False) -> Path | None:
        """Epoch `epoch`'s files: `checkpoint-epochN.pth` (with `epoch_file`), after which the
        interrupted checkpoint it supersedes and, with `keep_last`, the oldest epoch files go;
        and with `best` `model_best.pth`, a hard link to the epoch file when there is one (the
        same bytes, no second write), else a file of its own. The epoch file's path, or None.
        Every process calls it (the state gathers from all of them); rank 0 writes."""
        if not (epoch_file or best):
            return None
        path = self.folder() / f"checkpoint-epoch{epoch}.pth" if epoch_file else None
        self.finish()  # one write in flight at most; an earlier failure is raised here
        content = state()
        if distributed.is_main():
            for name in ([path] if path else []) + ([self.best_path] if best else []):
                self.logger.info("Saving checkpoint: %s ...", name)
        if not self.background:  # every process waits for rank 0's write, as in `finish`
            with distributed.all_or_none("saving a checkpoint"):
                if distributed.is_main():
                    self._write_files(content, path, best)
        else:
            with distributed.all_or_none("saving a checkpoint"):  # the copy may fail (memory)
                if distributed.is_main():
                    content = host_copy(content)  # training goes on changing the live tensors
                    self._writing = threading.Thread(target=self._write_in_background,
                                                     args=(content, path, best),
                                                     name="checkpoint")
                    self._writing.start()
        if path is not None and not distributed.is_main():
            self.last_saved = path
        return path

    def save_epoch(self, epoch: int, state: State) -> Path:
        """`checkpoint-epochN.pth` alone (`save`)."""
        return self.save(epoch, state)

    def save_interrupted(self, state: State) -> Path:
        """`checkpoint-interrupted.pth`: a run stopped by a signal between epoch files; written
        before it returns."""
        self.finish()
        path = self.folder() / INTERRUPTED_NAME
        content = state()
        with distributed.all_or_none("saving a checkpoint"):
            if distributed.is_main():
                self._write(content, path)
                self.logger.info("Saving checkpoint: %s ...", path)
        return path

    def finish(self) -> None:
        """Wait for the write in flight; its failure is a `WriteError` on every process (they
        wait with rank 0: a process that ended early would make torchrun stop it mid-write)."""
        with distributed.all_or_none("saving a checkpoint"):
            self.wait()

    def wait(self) -> None:
        """This process's write in flight, done; raises how it failed (once)."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _write_in_background(self, content: dict, path: Path | None, best: bool) -> None:
        try:
            self._write_files(content, path, best)
        except BaseException as error:  # noqa: BLE001 (why: raised in the training thread by wait())
            self._failure = error

    def _write_files(self, content: dict, path: Path | None, best: bool) -> None:
        folder = self.folder()
        if path is not None:
            self._write(content, path)
            self.last_saved = path
            (folder / INTERRUPTED_NAME).unlink(missing_ok=True)
            if self.keep_last:
                for old in prune_checkpoints(folder, self.keep_last, protect=self.protect):
                    self.logger.debug("Removed %s (trainer.keep_last: %d)", old.name,
                                      self.keep_last)
        if best and (path is None or not atomic_link(path, self.best_path)):
            self._write(content, self.best_path)

    def _write(self, content: dict, path: Path) -> None:
        try:
            save_checkpoint(content, path)
        except WriteError as error:
            raise WriteError(f"{error}; {self._what_is_intact()}", no_room=error.no_room) \
                from None

    def _what_is_intact(self) -> str:
        """After a failed write: which checkpoint still holds the run, and how to go on."""
        folder = self.folder()
        intact = self.last_saved or self.resumable  # this run's newest, or the one it resumed
        if intact is None:
            return "no checkpoint of this run was written; free space (or fix the folder) and " \
                   "start it again"
        resume = resume_command(folder if intact.parent == folder else intact)
        return (f"the previous checkpoint {intact.name} is intact; free space (or fix the "
                f"folder) and resume with: {resume}")

    @property
    def best_path(self) -> Path:
        return self.folder() / BEST_NAME


def host_copy(content, copied: dict | None = None):
    """`content` with every tensor copied into host memory and every list and dict rebuilt:
    what was there at the save point, whatever training changes in place after it. Containers
    keep their type (a state dict's `OrderedDict` and its `_metadata`), and a tensor met twice
    (tied weights) is copied once."""
    copied = {} if copied is None else copied
    if isinstance(content, torch.Tensor):
        # the same memory seen twice (a state dict gives tied weights as two tensor objects)
        key = (content.device, content.untyped_storage().data_ptr(), content.storage_offset(),
               tuple(content.shape), content.stride(), content.dtype)
        if key not in copied:
            copied[key] = content.detach().to("cpu", copy=True)
        return copied[key]
    if isinstance(content, dict):
        result = copy.copy(content)  # its type and attributes (_metadata)
        for key, value in content.items():
            result[key] = host_copy(value, copied)
        return result
    if isinstance(content, (list, tuple)):
        values = [host_copy(value, copied) for value in content]
        if isinstance(content, list):
            return type(content)(values)
        return type(content)(*values) if hasattr(content, "_fields") else type(content)(values)
    return content
