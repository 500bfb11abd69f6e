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

    def note(self, finite: Tensor) -> None:
        """Note one optimizer step's finiteness (policy "stop"; at most `capacity` between two
        checks)."""
        self._finite[self._count] = finite
        self._count += 1

    def skip_step(self, finite: Tensor) -> list[int]:
        """The processes whose losses of this step were not all finite (every process calls
        it): the step is skipped everywhere when any is listed."""
        return distributed.ranks_where(not finite.item())

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
