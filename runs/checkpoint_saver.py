"""Which checkpoint files a run writes, and when — the policy, apart from the loop (as timm's
`CheckpointSaver`): `checkpoint-epochN.pth` every `save_period` epochs and at the last (or an
early-stopped) epoch; `model_best.pth` on every improving epoch, a hard link to that epoch's
file when there is one; `checkpoint-interrupted.pth` when a signal stops a run mid-epoch, gone
once a later epoch file exists; with `keep_last` only the newest epoch files.

Under torchrun every process calls it (a checkpoint gathers from all of them); rank 0 writes.
"""
import logging
from collections.abc import Callable
from pathlib import Path

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
    when the run starts); `protect`: a checkpoint pruning must keep (the one resumed from)."""

    def __init__(self, folder: Callable[[], Path], save_period: int = 1,
                 keep_last: int | None = None, protect: Path | None = None,
                 logger: logging.Logger | None = None):
        self.folder = folder
        self.save_period = save_period
        self.keep_last = keep_last
        self.protect = protect
        self.logger = logger or logging.getLogger("trainer")
        self.last_saved: Path | None = None  # the newest epoch checkpoint written

    def is_due(self, epoch: int, last_epoch: int, stopping: bool) -> bool:
        """Whether `epoch` gets its `checkpoint-epochN.pth`."""
        return epoch % self.save_period == 0 or epoch == last_epoch or stopping

    def write(self, state: State, path: Path) -> None:
        """Write the checkpoint `state()` builds to `path` (rank 0; every process builds it)."""
        content = state()
        # the others wait for the write: a process that stopped early would make torchrun
        # stop rank 0 in the middle of it
        with distributed.all_or_none("saving a checkpoint"):
            if distributed.is_main():
                try:
                    save_checkpoint(content, path)
                except WriteError as error:
                    raise WriteError(f"{error}; {self._what_is_intact()}",
                                     no_room=error.no_room) from None
                self.logger.info("Saving checkpoint: %s ...", path)

    def save_epoch(self, epoch: int, state: State) -> Path:
        """`checkpoint-epochN.pth`; then the interrupted checkpoint it supersedes and, with
        `keep_last`, the oldest epoch checkpoints go."""
        folder = self.folder()
        path = folder / f"checkpoint-epoch{epoch}.pth"
        self.write(state, path)
        self.last_saved = path
        if not distributed.is_main():
            return path
        (folder / INTERRUPTED_NAME).unlink(missing_ok=True)
        if self.keep_last:
            for old in prune_checkpoints(folder, self.keep_last, protect=self.protect):
                self.logger.debug("Removed %s (trainer.keep_last: %d)", old.name, self.keep_last)
        return path

    def save_best(self, saved: Path | None, state: State) -> None:
        """`model_best.pth`: a hard link to this epoch's checkpoint `saved` when there is one
        (the same bytes; no second write), else its own file."""
        path = self.best_path
        linked = distributed.is_main() and saved is not None and atomic_link(saved, path)
        if distributed.from_main(linked):
            self.logger.info("Saving checkpoint: %s ...", path)
            return
        self.write(state, path)

    def save_interrupted(self, state: State) -> Path:
        """`checkpoint-interrupted.pth`: a run stopped by a signal between epoch files."""
        path = self.folder() / INTERRUPTED_NAME
        self.write(state, path)
        return path

    def _what_is_intact(self) -> str:
        """After a failed write: which checkpoint still holds the run, and how to go on."""
        folder = self.folder()
        intact = self.last_saved or self.protect  # this run's newest, or the one it resumed
        if intact is None:
            return "no checkpoint of this run was written; free space (or fix the folder) and " \
                   "start it again"
        resume = resume_command(folder if intact.parent == folder else intact)
        return (f"the previous checkpoint {intact.name} is intact; free space (or fix the "
                f"folder) and resume with: {resume}")

    @property
    def best_path(self) -> Path:
        return self.folder() / BEST_NAME
