"""One optimizer step over a group of micro-batches: the machinery around `training_step`.

Each loss is weighted by its micro-batch's share of the step's samples (over every process
under torchrun), gradients stay local until the last micro-batch (DDP's `no_sync`), the step
runs under autocast with the fp16 grad scaler, gradients are clipped, and `nan_policy` is
applied. Everything is off by default; each part is a `trainer` config key (`amp`,
`grad_accum_steps`, `grad_clip_norm`, `nan_policy`).
"""
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from step.batches import StepOutput, detached, step_output
from utils import distributed
from utils.errors import TrainingDiverged, UserError
from utils.interrupts import STOP_SIGNALS

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepInProgress:
    """Where the engine stands inside one optimizer step, for the seam's `backward` and
    `step`."""

    updating: bool = False  # inside a training step: backward and step act
    weight: float = 1.0     # this micro-batch's share of the step's samples (x processes)
    last: bool = True       # the step's last micro-batch: the optimizers step after it
    finite: Tensor | None = None  # whether every loss of the step so far was finite (device)
    stepped: set[str] = field(default_factory=set)  # optimizers that stepped
    skipped: set[str] = field(default_factory=set)  # optimizers whose step nan_policy skipped
    called: set[str] = field(default_factory=set)   # step(name) calls in this micro-batch
    # manual optimization with accumulation: each optimizer's gradients as they were at its
    # step() calls in the earlier micro-batches (what later backward passes add is not theirs)
    set_aside: dict[str, list[Tensor | None]] = field(default_factory=dict)

    def note(self, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.finite = finite if self.finite is None else self.finite & finite

    def set_gradients_aside(self, name: str, parameters: list[Tensor]) -> None:
        """Keep the gradients of `parameters` aside (adding to what was kept) and clear them."""
        kept = self.set_aside.get(name) or [None] * len(parameters)
        self.set_aside[name] = [grad if old is None else old if grad is None else old + grad
                                for old, grad in zip(kept, (p.grad for p in parameters))]
        for parameter in parameters:
            parameter.grad = None

    def restore_gradients(self, name: str, parameters: list[Tensor]) -> None:
        """Add what `set_gradients_aside` kept for `name` to the gradients of `parameters`."""
        for parameter, kept in zip(parameters, self.set_aside.pop(name, ())):
            if kept is not None:
                parameter.grad = kept if parameter.grad is None else parameter.grad + kept


@dataclass
class StepResult:
    """What one optimizer step gave: each micro-batch's detached output and size (None when
    `nan_policy: skip` dropped the step), and the optimizers that stepped."""

    outputs: list[tuple[StepOutput, int]] | None
    stepped: set[str]


class StepEngine:
    """Runs optimizer steps through the seam (`to_device`, `training_step`), for the
    optimizers by name (one optimizer is named ""). `automatic`: False when `training_step`
    calls `backward(loss)` and `step(name)` itself (several optimizers)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], device: torch.device,
                 settings, automatic: bool, logger):
        self.optimizers = optimizers
        self.device = device
        self.automatic = automatic
        self.logger = logger
        self.nan_policy = settings.nan_policy
        self.nan_guard = NanGuard(settings.log_step, device)
        self.dtype = AMP_DTYPES.get(settings.amp)
        self.scaler = torch.amp.GradScaler(device.type) if settings.amp == "fp16" else None
        self.grad_clip_norm = settings.grad_clip_norm
        # the process group exists before the trainer is built
        self.distributed, self.processes = distributed.active(), distributed.world_size()
        self.current = StepInProgress()
        # one context entered around every micro-batch (entered again each time, never nested)
        self.autocast_context = self.autocast()

    def count(self, group: list, batch_size: Callable, received: int | None
              ) -> tuple[list[int], int, int | None]:
        """The samples of each micro-batch of `group`, of this optimizer step over every
        process, and under torchrun the stop signal every process agrees on before the step
        (`received`: this process's; no process is left waiting in a collective the others
        stopped calling). Alone: None, the loop acts on its own signal after the step."""
        sizes = list(map(batch_size, group))
        total = sum(sizes)
        if not self.distributed:
            return sizes, total, None
        total, *counts = distributed.sum_counts([total, *(received == s for s in STOP_SIGNALS)])
        return sizes, int(total), next((s for s, count in zip(STOP_SIGNALS, counts) if count),
                                       None)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run(self, seam, model: nn.Module, group: list, sizes: list[int], total: int,
            global_step: int) -> StepResult:
        """One optimizer step over `group`, each loss weighted by its share of the step's
        `total` samples (so N micro-batches of B step like one batch of N*B, and under torchrun
        K processes like one: DDP averages their gradients, hence the factor K)."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        current = self.current = StepInProgress(updating=True)
        results = []
        try:
            for index, (batch, size) in enumerate(zip(group, sizes)):
                batch = seam.to_device(batch)
                current.weight = size * self.processes / total
                current.last, current.called = index == len(group) - 1, set()
                if index and not self.automatic:  # what counts was set aside by step()
                    for optimizer in self.optimizers.values():
                        optimizer.zero_grad(set_to_none=True)
                # DDP averages gradients in the last micro-batch's backward only
                with _no_sync(model) if not current.last else contextlib.nullcontext():
                    with self.autocast_context:
                        step = step_output(seam.training_step(batch))
                    if self.automatic:
                        seam.backward(step.loss)  # the seam's: a subclass may override it
                    else:
                        current.note(step.loss)
                results.append((StepOutput(step.loss.detach(), detached(step.output),
                                           detached(step.target), detached(step.parts)), size))
        finally:
            self.current = StepInProgress()
        if self.automatic:
            self._step_or_skip(next(iter(self.optimizers)), current)
        if current.stepped and self.scaler is not None:  # once all optimizers stepped
            self.scaler.update()
        if self.nan_policy == "stop":  # noted on the device; read back at log steps
            self.nan_guard.note(current.finite)
        if current.skipped:
            self._warn_skipped(current, [step.loss for step, _ in results], global_step)
        return StepResult(results if not current.skipped else None, current.stepped)

    def backward(self, loss: Tensor) -> None:
        """Backpropagate `loss` of the micro-batch in progress, weighted by its share of the
        step's samples and scaled by the fp16 grad scaler; nothing outside a training step."""
        current = self.current
        if not current.updating:
            return
        current.note(loss)
        loss = loss * current.weight if current.weight != 1 else loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, name: str) -> None:
        """Manual optimization's `step(name)`: step optimizer `name` after the step's last
        micro-batch (its gradients of the earlier ones set aside until then); nothing outside
        a training step."""
        if not name and len(self.optimizers) == 1:
            name = next(iter(self.optimizers))
        if name not in self.optimizers:
            raise UserError(f"step({name!r}): no such optimizer (the config's: "
                            f"{', '.join(map(repr, self.optimizers))})")
        current = self.current
        if not current.updating:
            return
        if name in current.called:
            raise UserError(f"step({name!r}) was called twice in one training_step; each "
                            f"optimizer steps once per step")
        current.called.add(name)
        parameters = list(optimizer_parameters(self.optimizers[name]))
        if not current.last:
            current.set_gradients_aside(name, parameters)
            return
        current.restore_gradients(name, parameters)
        self._step_or_skip(name, current)
        self.optimizers[name].zero_grad(set_to_none=True)

    def _step_or_skip(self, name: str, current: StepInProgress) -> None:
        """Step optimizer `name` (or skip it, with `nan_policy: skip` and a non-finite loss)."""
        if self.nan_policy == "skip" and current.finite is not None and \
                self.nan_guard.skip_step(current.finite):
            current.skipped.add(name)
            return
        self.apply(self.optimizers[name])
        current.stepped.add(name)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale (fp16), clip, and step `optimizer` (the scaler skips steps with inf/NaN
        gradients); the scale is updated once per optimizer step, by `run`."""
        if self.scaler is not None and self.grad_clip_norm is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(optimizer_parameters(optimizer), self.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def _warn_skipped(self, current: StepInProgress, losses: list[Tensor],
                      global_step: int) -> None:
        names = [name for name in current.skipped if name]
        which = f" of optimizer {', '.join(names)}" if names else ""
        shown = "" if distributed.active() else \
            f" ({', '.join(str(loss.item()) for loss in losses)})"
        self.logger.warning("Skipped step %d%s: the loss is not finite%s.", global_step + 1,
                            which, shown)


class NanGuard:
    """"stop": each step's finiteness is noted on the device (no host sync) and read back at
    log steps and the epoch's end (`check`), which raises `TrainingDiverged` naming the first
    bad step. "skip": `skip_step` decides before each optimizer step (a host sync, agreed by
    every process) whether to drop it."""

    def __init__(self, capacity: int, device: torch.device):
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

    def count_skipped(self) -> None:
        """An optimizer step in which no optimizer stepped: the losses were not finite."""
        self._skipped += 1

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
            f"good one. Look for NaN in the data, lower the learning rate, or set "
            f"trainer.nan_policy to \"skip\".")


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` (keep gradients local); nothing to skip without DDP."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
    """Every parameter of every group of `optimizer`."""
    return (p for group in optimizer.param_groups for p in group["params"])
