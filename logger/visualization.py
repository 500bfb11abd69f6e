"""TensorBoard output through `torch.utils.tensorboard`, opened explicitly and closed cleanly."""
import os
from pathlib import Path


class TensorboardWriter:
    """Scalars to TensorBoard when `enabled`; every call is a no-op otherwise.

    The constructor only stores: the event file is created by `open()`.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None

    def open(self, purge_step: int | None = None) -> None:
        """Start writing; `purge_step` drops points at or after it left by an interrupted run."""
        if self.enabled and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Each `tag: value` as its own scalar curve at `step`."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
