"""`trainer.nan_policy`: what a NaN or infinite loss does, decided by the machinery around the
user's step, which only returns its loss."""
import torch
from torch import Tensor

from utils import distributed
from utils.errors import TrainingDiverged


class NanGuard:
    """"stop": each step's finiteness is noted on the device (no host sync) and read back at
    log steps and the epoch's end (`check`), which raises `TrainingDiverged` naming the first
    bad step. "skip": `skip_step` decides before each optimizer step (a host sync, agreed by
    every process) whether to drop it."""

    def __init__(self, policy: str, capacity: int, device: torch.device):
        self.policy = policy
        self._finite = torch.ones(capacity, dtype=torch.bool, device=device)
        self._count = 0  # steps noted since the last check
        self._skipped = 0  # steps of this epoch that nan_policy "skip" dropped entirely

    def note(self, finite: Tensor) -> None:
        """Note one optimizer step's finiteness (policy "stop"; at most `capacity` between two
        checks)."""
        self._finite[self._count] = finite
        self._count += 1

    def skip_step(self, finite: Tensor) -> list[int]:
        """The processes whose losses of this step were not all finite (every process calls
        it): the step is skipped everywhere when any is listed."""
        return distributed.ranks_where(not finite.item())

    def start_epoch(self) -> None:
        self._skipped = 0

    def count_step(self, skipped: bool) -> None:
        """One optimizer step done; `skipped`: no optimizer stepped, the losses were not finite."""
        self._skipped += skipped

    def check_epoch(self, epoch: int, steps: int) -> None:
        """Raise `TrainingDiverged` when every one of the epoch's `steps` was skipped: nothing
        trains any more, and the weights are what they were (not worth a checkpoint)."""
        if steps and self._skipped == steps:
            raise TrainingDiverged(
                f"every step of epoch {epoch} ({steps}) had a NaN or infinite loss and was "
                f"skipped (trainer.nan_policy \"skip\"): training no longer progresses; stopped "
                f"without saving, so the newest checkpoint is the last good one. Lower the "
                f"learning rate, or look for NaN in the data.")

    def check(self, epoch: int, epoch_step: int, global_step: int) -> None:
        """Raise `TrainingDiverged` if a step noted since the last check was not finite (on any
        process); `epoch_step`, `global_step`: the steps done, the last noted one included."""
        count, self._count = self._count, 0
        if count == 0:
            return
        flags = self._finite[:count]
        first_bad = count if bool(flags.all()) else int((~flags).nonzero()[0])
        first_bad = -distributed.max_value(-first_bad)  # the earliest on any process
        if first_bad == count:
            return
        step_in_epoch = epoch_step - count + first_bad + 1
        bad_step = global_step - count + first_bad + 1
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {epoch}, step {step_in_epoch} (global "
            f"step {bad_step}); stopped without saving, so the newest checkpoint is the last "
            f"good one. Lower the learning rate, or set trainer.nan_policy to \"skip\".")
