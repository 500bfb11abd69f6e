"""One optimizer step over a group of micro-batches: the machinery around `training_step`.

Each loss is weighted by its micro-batch's share of the step's samples (over every process
under torchrun), gradients stay local until the last micro-batch (DDP's `no_sync`), the step
runs under autocast with the grad scaler, `nan_policy` is applied, and under torchrun the
processes agree on a stop signal before each step. `StepMachinery` is a part of `Driver`; it
uses the driver's `optimizers`, `mechanics`, `nan_guard`, `settings` and the user's seam.
"""
import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from base.base_trainer import StopRequested
from trainer.batches import detached
from trainer.step_output import StepOutput, step_output
from utils import distributed
from utils.interrupts import STOP_SIGNALS


@dataclass
class MicroBatch:
    """Where the machinery stands inside one optimizer step, for `backward` and `step`."""

    updating: bool = False  # inside a training step: backward and step act
    weight: float = 1.0     # this micro-batch's share of the step's samples (x processes)
    last: bool = True       # the step's last micro-batch: the optimizers step after it
    finite: Tensor | None = None  # whether every loss of the step so far was finite (device)
    stepped: set[str] = field(default_factory=set)  # optimizers that stepped
    skipped: set[str] = field(default_factory=set)  # optimizers whose step nan_policy skipped
    called: set[str] = field(default_factory=set)   # step(name) calls in this micro-batch
    # manual optimization with accumulation: each optimizer's gradients as they were at its
    # step() calls in the earlier micro-batches (what later backward passes add is not theirs)
    held: dict[str, list[Tensor | None]] = field(default_factory=dict)

    def note(self, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.finite = finite if self.finite is None else self.finite & finite

    def hold(self, name: str, parameters: list[Tensor]) -> None:
        """Keep the gradients of `parameters` aside (adding to what was kept) and clear them."""
        kept = self.held.get(name) or [None] * len(parameters)
        self.held[name] = [grad if old is None else old if grad is None else old + grad
                           for old, grad in zip(kept, (p.grad for p in parameters))]
        for parameter in parameters:
            parameter.grad = None

    def give_back(self, name: str, parameters: list[Tensor]) -> None:
        """Add what `hold` kept for `name` to the gradients of `parameters`."""
        for parameter, kept in zip(parameters, self.held.pop(name, ())):
            if kept is not None:
                parameter.grad = kept if parameter.grad is None else parameter.grad + kept


class StepMachinery:
    """The optimizer step of `Driver` (a part of it, not a class of its own)."""

    def _step_total(self, group: list) -> tuple[list[int], int, int | None]:
        """The samples of each micro-batch, of this optimizer step over every process, and
        under torchrun the signal that stops them all (one agreed before each step: no process
        is left waiting in a collective that the others have stopped calling)."""
        sizes = [self.batch_size(batch) for batch in group]
        total = sum(sizes)
        if not distributed.active():
            return sizes, total, None
        received = self.stop_signals.received
        total, *counts = distributed.sum_counts([total, *(received == s for s in STOP_SIGNALS)])
        return sizes, int(total), next((s for s, count in zip(STOP_SIGNALS, counts) if count),
                                       None)

    def _optimizer_step(self, group: list, sizes: list[int], total: int
                        ) -> tuple[list[tuple[StepOutput, int]] | None, set[str]]:
        """One optimizer step over a group of micro-batches, each loss weighted by its share of
        the step's `total` samples (so N micro-batches of B step like one batch of N*B, and
        under torchrun K processes like one: DDP averages their gradients, hence the factor
        K). Returns each micro-batch's detached step output and size (None when `nan_policy:
        skip` skipped an optimizer: the losses are not finite), and the optimizers that
        stepped."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        processes = distributed.world_size()
        micro = self._micro = MicroBatch(updating=True)
        results = []
        try:
            for index, (batch, size) in enumerate(zip(group, sizes)):
                batch = self.to_device(batch)
                micro.weight, micro.last = size * processes / total, index == len(group) - 1
                micro.called = set()
                if index and not self.automatic_optimization:  # what counts was held by step()
                    for optimizer in self.optimizers.values():
                        optimizer.zero_grad(set_to_none=True)
                # DDP averages gradients in the last micro-batch's backward only
                with self._no_sync() if not micro.last else contextlib.nullcontext():
                    with self.mechanics.autocast():
                        step = step_output(self.training_step(batch))
                    if self.automatic_optimization:
                        self.backward(step.loss)
                    else:
                        micro.note(step.loss)
                results.append((StepOutput(step.loss.detach(), detached(step.output),
                                           detached(step.target), detached(step.parts)), size))
        finally:
            self._micro = MicroBatch()
        if self.automatic_optimization:
            self._step_automatically(micro)
        if micro.stepped:  # the scaler's new scale, once all optimizers stepped
            self.mechanics.update()
        if self.settings.nan_policy == "stop":  # noted on the device; read back at log steps
            self.nan_guard.note(micro.finite)
        if micro.skipped:
            self._warn_skipped(micro, [step.loss for step, _ in results])
        return (results if not micro.skipped else None), micro.stepped

    def _step_automatically(self, micro: MicroBatch) -> None:
        """The one optimizer's step (or its skip, with `nan_policy: skip`)."""
        name = next(iter(self.optimizers))
        if self.settings.nan_policy == "skip" and self.nan_guard.skip_step(micro.finite):
            micro.skipped.add(name)
        else:
            self.mechanics.step(self.optimizer, update=False)
            micro.stepped.add(name)

    def _warn_skipped(self, micro: "MicroBatch", losses: list[Tensor]) -> None:
        names = [name for name in micro.skipped if name]
        which = f" of optimizer {', '.join(names)}" if names else ""
        shown = "" if distributed.active() else \
            f" ({', '.join(str(loss.item()) for loss in losses)})"
        self.logger.warning("Skipped step %d%s: the loss is not finite%s.", self.global_step + 1,
                            which, shown)

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's `no_sync` (keep gradients local); nothing to skip without DDP."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def _stop(self, epoch: int, signal: int) -> None:
        """Stop on `signal` where the epoch stands; never with weights a non-finite loss has
        reached."""
        self.nan_guard.check(epoch, self.epoch_step, self.global_step)
        raise StopRequested(signal)
