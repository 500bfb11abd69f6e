"""The machinery around the user's step: one driver for training, resume and the dry run.

`Driver` runs the epochs' optimizer steps over groups of micro-batches and calls the seam that
`trainer.trainer.Trainer` implements (`training_step`, `validation_step`, `to_device`,
`batch_size`, `unpack`) — with accumulation and sample weights, DDP's `no_sync`, autocast and
the grad scaler, clipping, the NaN policy, watch hooks, stop signals, resume positions,
progress and the epoch's metrics. Nothing here is meant to be overridden.
"""
import contextlib
import itertools
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from base.base_data_loader import BaseDataLoader, release_workers
from base.base_trainer import BaseTrainer, StopRequested, metric_name
from logger.progress import bars_wanted, counted, progress_bar, step_postfix
from logger.visualization import is_image_batch
from trainer.batches import detached, first_tensor, map_tensors
from trainer.checkpoint import unwrap_model
from trainer.evaluation import ConfusionMatrix, broadcast_warning, describe_error
from trainer.metrics import EpochMetrics
from trainer.nan_guard import NanGuard
from trainer.positions import check_position, position
from trainer.precision import StepMechanics
from trainer.step_output import StepOutput, step_output
from trainer.watch import Watch
from utils import distributed
from utils.errors import ConfigError, UserError
from utils.interrupts import STOP_SIGNALS
from utils.seeding import get_rng_state, set_rng_state
from utils.util import inf_loop


class Callback:
    """Code run by the trainer at fixed points (`train.main(argv, callbacks=[...])`), each
    method given the trainer: extra logging, a test's injected signal. The defaults do
    nothing."""

    def on_step_start(self, trainer: "Driver") -> None:
        """Before each training optimizer step (`trainer.global_step` steps done)."""

    def on_step_end(self, trainer: "Driver") -> None:
        """After each training optimizer step, before a stop signal is acted on."""

    def on_validation_batch_end(self, trainer: "Driver") -> None:
        """After each validation batch, before a stop signal is acted on."""


@dataclass
class _MicroBatch:
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


@dataclass
class DryRunResult:
    """What `Trainer.dry_run` did: the steps' losses, the validation values (None without
    validation data) and notes on the optional switches it exercised."""

    losses: list[float] = field(default_factory=list)
    log: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def _image_warning(images) -> str:
    shape = tuple(images.shape) if isinstance(images, Tensor) else "not a tensor"
    return ("Warning: trainer.log_images needs image batches (B, C, H, W) with 1 or 3 channels; "
            f"these are {shape}. No images are logged.")


class Driver(BaseTrainer):
    """Trains `model` on `data_loader`, validating on `valid_data_loader` after each epoch,
    through the seam a subclass implements (`Trainer`).

    With `len_epoch` (or `trainer.len_epoch`) an epoch is exactly that many optimizer steps,
    cycling through the data as often as needed; otherwise it is one pass over the data.

    Under torchrun the model is wrapped in DistributedDataParallel: each process trains on its
    share of every global batch, gradients are averaged across processes, each loss weighted
    so that a step equals the single-process step over the whole global batch.
    """

    # False: `training_step` calls `self.backward(loss)` and `self.step(name)` itself
    automatic_optimization = True

    def __init__(self, model: nn.Module, criterion: Callable | None,
                 metric_fns: Sequence[Callable], optimizer, config, device: torch.device,
                 data_loader: DataLoader, valid_data_loader: DataLoader | None = None,
                 lr_scheduler=None, len_epoch: int | None = None):
        super().__init__(model, criterion, metric_fns, optimizer, config, lr_scheduler)
        self.device = device
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.accum = self.settings.grad_accum_steps
        # optimizer steps per epoch; a pass's last group of micro-batches may be short
        self.len_epoch = len_epoch or self.settings.len_epoch or -(-len(data_loader) // self.accum)
        self.iteration_based = bool(len_epoch or self.settings.len_epoch)
        self.epoch = self.start_epoch  # the epoch being trained, for the user's step
        self.metric_names = [metric_name(fn) for fn in self.metric_fns]
        self.train_metrics = EpochMetrics(self.metric_fns, device)
        # what the step logs besides the loss (known from the first batch; None before)
        self.loss_parts: list[str] | None = None
        self.nan_guard = NanGuard(self.settings.nan_policy, self.settings.log_step, device)
        self.mechanics = StepMechanics(self.model, self.optimizer, device, self.settings.amp,
                                       self.settings.grad_clip_norm)
        self.scaler = self.mechanics.scaler
        self._micro = _MicroBatch()  # where the machinery is inside an optimizer step
        self.watch = Watch(unwrap_model(self.model), self.settings.watch)  # hooks: train()
        compile_options = self.settings.compile
        if compile_options is True or isinstance(compile_options, dict):  # {} = the defaults
            options = compile_options if isinstance(compile_options, dict) else {}
            self.model = torch.compile(self.model, **options)  # checkpoints: unwrap_model
        # evaluation runs the model without the DDP wrapper (`train()` adds it): no
        # collectives, so processes may have different numbers of validation batches
        self.eval_model = self.model
        if distributed.active() and not isinstance(data_loader, BaseDataLoader):
            raise ConfigError(
                f"data_loader.type: {type(data_loader).__name__} is not a BaseDataLoader; "
                f"under torchrun each process must load its own share of the data, which "
                f"BaseDataLoader does")
        if not self.automatic_optimization and distributed.active():
            raise UserError(
                f"trainer.type: {type(self).__name__} steps its optimizers itself "
                f"(automatic_optimization = False), which torchrun does not support: its "
                f"gradients would not be averaged over the processes; train it in one process")
        if len(self.optimizers) > 1 and self.automatic_optimization:
            raise ConfigError(
                f"optimizers: {len(self.optimizers)} optimizers need a training_step that steps "
                f"them: set automatic_optimization = False in {type(self).__name__} and call "
                f"self.backward(loss) and self.step(name) in its training_step")
        # tqdm bars on a terminal (rank 0 only), else a log line every log_step steps
        self.bars = bars_wanted(self.settings.progress_bar) and distributed.is_main()
        self._window = (0.0, 0)  # (time, samples) at the last log step: samples/s since then
        self._epoch_samples = 0
        self.log_images = self.settings.log_images and distributed.is_main()
        self.first_inputs = None  # two samples' model inputs, set by check_first_batch
        self.model_notes: list[str] = []  # what building the model did (train.py's arch.*)
        self.callbacks: list[Callback] = []
        self._check_schedule_length()  # the monitored value: once the step's parts are known

    # ------------------------------------------------------------------ the seam it calls
    @abstractmethod
    def training_step(self, batch) -> Tensor | dict[str, Tensor]:
        """Forward and loss of one training (micro-)batch (see `Trainer`)."""

    @abstractmethod
    def validation_step(self, batch) -> Tensor | dict[str, Tensor]:
        """Forward and loss of one validation or test batch (see `Trainer`)."""

    @abstractmethod
    def to_device(self, batch):
        """`batch` on this process's device."""

    @abstractmethod
    def batch_size(self, batch) -> int:
        """The samples in `batch`."""

    @abstractmethod
    def unpack(self, batch) -> tuple:
        """`(inputs, target)` of a batch by the default convention; a `UserError` when it
        does not follow it."""

    # ------------------------------------------------------------------ checks
    def _check_schedule_length(self) -> None:
        """A schedule with a fixed length (OneCycleLR's total_steps) must cover the run when it
        steps per optimizer step (else it fails part-way, after hours); stepped per epoch it
        is most likely a mistake."""
        for name, scheduler in self.lr_schedulers.items():
            total = getattr(scheduler, "total_steps", None)
            if not isinstance(total, int):
                continue
            path = f"optimizers.{name}.lr_scheduler" if name else "lr_scheduler"
            needed = self.settings.epochs * self.len_epoch
            if self.scheduler_intervals[name] == "step" and total < needed:
                raise ConfigError(
                    f"{path}.args.total_steps: the schedule has {total} steps but training runs "
                    f"{needed} ({self.settings.epochs} epochs x {self.len_epoch} optimizer "
                    f"steps); set total_steps to {needed}")
            if self.scheduler_intervals[name] == "epoch":
                self.logger.warning(
                    "Warning: %s.type %s has a fixed length (%d steps) and steps once per epoch "
                    "here; it is meant to step after every optimizer step: set %s.interval to "
                    "\"step\" (and total_steps to %d).", path, type(scheduler).__name__, total,
                    path, needed)

    def expected_log_keys(self) -> list[str]:
        keys = ["loss", *(self.loss_parts or ()), *self.metric_names]
        if self.valid_data_loader is not None:
            keys += [f"val_{key}" for key in keys]
        return keys

    def check_first_batch(self) -> None:
        """Fail now, with one clear line, if a batch does not go through the step, the model,
        the loss and the metrics (warn when output and target broadcast in the loss); learn the
        step's loss parts. Eval mode; the generators are left as they were, so exact resume
        holds whatever the step draws."""
        loader = self.valid_data_loader
        if loader is None or len(loader) == 0:  # torchrun: this process's share may be empty
            loader = self.data_loader
        batch = next(iter(loader))
        release_workers(loader)
        rng_state = get_rng_state()
        try:
            step = self._check_step(self.to_device(batch))
        except (RuntimeError, IndexError, TypeError, ValueError, KeyError,
                AttributeError) as error:
            raise UserError(f"the first batch does not go through model, loss and metrics: "
                            f"{describe_error(error)}") from None
        finally:
            set_rng_state(rng_state)
        self.loss_parts = list(step.parts)
        self.train_metrics = EpochMetrics(self.metric_fns, self.device, self.loss_parts)
        self.check_monitor()
        self.first_inputs = self._summary_inputs(batch)

    def _check_step(self, batch) -> StepOutput:
        """`training_step` (in eval mode, without gradients: nothing is updated) and
        `validation_step` on `batch`, and their output through the metrics; the latter's."""
        with self._evaluating(), self.mechanics.autocast():
            trained = self._checked_output(batch, "training_step")
            step = self._checked_output(batch, "validation_step")
        if list(trained.parts) != list(step.parts):
            raise UserError(f"training_step returns the loss parts {list(trained.parts)}, "
                            f"validation_step {list(step.parts)}; both must return the same")
        warning = broadcast_warning(step.output, step.target)
        if warning:
            self.logger.warning(warning)
        return step

    def _checked_output(self, batch, method: str) -> StepOutput:
        step = step_output(getattr(self, method)(batch), method)
        metrics = EpochMetrics(self.metric_fns, self.device)
        if metrics.needs_output and (step.output is None or step.target is None):
            raise UserError(
                f"metrics {', '.join(self.metric_names)} need the step's \"output\" and "
                f"\"target\", and {method} returned only "
                f"{['loss', *step.parts] if step.parts else 'the loss'}; return them in the "
                f"step's dict, or set \"metrics\": []")
        metrics.update(step, self.batch_size(batch))
        return step

    def _summary_inputs(self, batch):
        """Two samples of the model's inputs by the default convention, for the model summary;
        None when the batch does not follow it."""
        try:
            inputs, _ = self.unpack(batch)
        except UserError:
            return None
        return map_tensors(inputs, lambda tensor: tensor[:2] if tensor.dim() else tensor)

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        """Train; under torchrun in DistributedDataParallel, which it wraps the model in first
        (compiled inside DDP, as torch.compile's docs advise; DDP starts from rank 0's
        weights, which resume has loaded in every process alike)."""
        self.check_monitor()  # check_first_batch checked it, unless it was not called
        self._wrap_ddp()
        if self.watch.enabled and not self.settings.tensorboard:
            self.logger.warning("Warning: trainer.watch writes to TensorBoard only, and "
                                "trainer.tensorboard is off: nothing is watched.")
            self.watch.enabled = False
        if self.watch.enabled:
            self.watch.attach()
        try:
            super().train()
        finally:  # persistent workers end with training, not whenever the loaders are collected
            self.watch.detach()  # no hook is left on the model
            release_workers(self.data_loader, self.valid_data_loader)

    def _wrap_ddp(self) -> None:
        if distributed.active() and not isinstance(self.model,
                                                   nn.parallel.DistributedDataParallel):
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def dry_run(self, steps: int = 2, batches: int = 2) -> DryRunResult:
        """`steps` optimizer steps and `batches` validation batches, exactly as training runs
        them (the same driver; image logging and watch hooks exercised when on), writing
        nothing. A loss that is not finite raises `TrainingDiverged`."""
        self._wrap_ddp()
        self.model.train()
        epoch, result = self.start_epoch, DryRunResult()
        self.epoch, self.epoch_step = epoch, self.start_step  # a NaN is reported at its step
        watching = self.watch.enabled and self.settings.tensorboard
        if watching:
            self.watch.attach()
        try:
            for index, group in enumerate(itertools.islice(
                    self._step_groups(epoch, self.start_step), steps)):
                sizes, total, _ = self._step_total(group)
                if index == 0 and self.settings.log_images:
                    result.notes.append(self._image_note(group[0]))
                self.watch.recording = watching and index == 0
                outputs, _ = self._optimizer_step(group, sizes, total)
                self.watch.recording = False
                if watching and index == 0:
                    result.notes.append(f"trainer.watch: recorded on the first step: "
                                        f"{', '.join(self.watch.scalars())}")
                self.epoch_step += 1
                self.global_step += 1
                self.nan_guard.check(epoch, self.epoch_step, self.global_step)
                if outputs is not None:
                    result.losses.append(outputs[-1][0].loss.item())
            if self.valid_data_loader is not None:
                result.log = self.evaluate(itertools.islice(self.valid_data_loader, batches))
        finally:
            self.watch.detach()
            release_workers(self.data_loader, self.valid_data_loader)
        return result

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.epoch = epoch
        if epoch == self.start_epoch and self.start_step:  # resumed mid-epoch
            self.epoch_step = self.start_step
        else:
            self.epoch_step = 0
            self.train_metrics.reset()
        started = time.monotonic()
        self._window, self._epoch_samples = (started, 0), 0
        with progress_bar(self.bars, self.len_epoch, f"epoch {epoch}/{self.settings.epochs}",
                          initial=self.epoch_step) as bar:
            self._train_steps(epoch, bar)
        self.nan_guard.check(epoch, self.epoch_step, self.global_step)
        seconds = time.monotonic() - started
        self.epoch_stats = {"samples_per_s": self._epoch_samples / seconds} \
            if self._epoch_samples and seconds > 0 else {}
        self.train_metrics.all_reduce()  # torchrun: the epoch's means over every process
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            log.update({f"val_{key}": value for key, value in self._valid_epoch(epoch).items()})
        return log

    def _train_steps(self, epoch: int, bar) -> None:
        """The epoch's optimizer steps from `epoch_step` on, advancing `bar` (if any)."""
        for group in self._step_groups(epoch, self.epoch_step):
            sizes, total, signal = self._step_total(group)
            if signal:  # torchrun: every process stops before the same step
                self._stop(epoch, signal)
            if self.epoch_step == 0 and self.log_images:
                self._log_images(group[0])
            log_now = self.epoch_step % self.settings.log_step == 0  # this step is logged
            # hooks record on steps that are logged, and only where TensorBoard is written
            self.watch.recording = self.watch.enabled and distributed.is_main() and log_now
            if self.watch.recording and self.scaler is not None:  # a host sync, on log steps
                self.watch.gradient_scale = self.scaler.get_scale()
            for callback in self.callbacks:
                callback.on_step_start(self)
            outputs, stepped = self._optimizer_step(group, sizes, total)
            self.watch.recording = False
            self.global_step += 1
            self.epoch_step += 1
            for callback in self.callbacks:
                callback.on_step_end(self)
            self._epoch_samples += total
            for step, size in outputs or ():
                self.train_metrics.update(step, size)
            rates = self.learning_rates() if log_now else None  # as used by this step
            for name in stepped:  # step-wise schedules of the optimizers that stepped
                if name in self.lr_schedulers and self.scheduler_intervals[name] == "step":
                    self.lr_schedulers[name].step()
            if bar is not None:
                bar.update(1)
            if log_now:
                self.nan_guard.check(epoch, self.epoch_step, self.global_step)
                if outputs is not None:
                    self._log_progress(epoch, outputs[-1][0].loss, rates, bar)
            if self.stop_signals.requested and not distributed.active():
                self._stop(epoch, self.stop_signals.received)

    def _image_batch(self, batch):
        """The image tensor of a batch: the first tensor of its inputs (default convention),
        else of the batch."""
        try:
            inputs, _ = self.unpack(batch)
        except UserError:
            inputs = batch
        return first_tensor(inputs)

    def _image_note(self, batch) -> str:
        """What `trainer.log_images` would log from `batch` (the dry run's check)."""
        images = self._image_batch(batch)
        if is_image_batch(images):
            return f"trainer.log_images: a grid of {min(16, images.size(0))} images per epoch"
        return _image_warning(images)

    def _log_images(self, batch) -> None:
        """The epoch's first input batch as an image grid (`trainer.log_images`)."""
        images = self._image_batch(batch)
        if not is_image_batch(images):
            self.logger.warning(_image_warning(images))
            self.log_images = False
            return
        self.writer.add_image_grid("inputs/train", images, self.global_step)

    def _stop(self, epoch: int, signal: int) -> None:
        """Stop on `signal` where the epoch stands; never with weights a non-finite loss has
        reached."""
        self.nan_guard.check(epoch, self.epoch_step, self.global_step)
        raise StopRequested(signal)

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
        micro = self._micro = _MicroBatch(updating=True)
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
            self._micro = _MicroBatch()
        if self.automatic_optimization:
            self._step_automatically(micro)
        if micro.stepped:  # the scaler's new scale, once all optimizers stepped
            self.mechanics.update()
        if self.settings.nan_policy == "stop":  # noted on the device; read back at log steps
            self.nan_guard.note(micro.finite)
        if micro.skipped:
            self._warn_skipped(micro, [step.loss for step, _ in results])
        return (results if not micro.skipped else None), micro.stepped

    def _step_automatically(self, micro: _MicroBatch) -> None:
        """The one optimizer's step (or its skip, with `nan_policy: skip`)."""
        name = next(iter(self.optimizers))
        if self.settings.nan_policy == "skip" and self.nan_guard.skip_step(micro.finite):
            micro.skipped.add(name)
        else:
            self.mechanics.step(self.optimizer, update=False)
            micro.stepped.add(name)

    def _warn_skipped(self, micro: "_MicroBatch", losses: list[Tensor]) -> None:
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

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The model the step sees is the evaluation one (no DDP wrapper), in eval mode, without
        gradients; `backward` and `step` do nothing. Restored afterwards."""
        model, was_training = self.model, self.model.training
        self.model = self.eval_model
        self.eval_model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model = model
            model.train(was_training)

    def evaluate(self, batches: Iterable, stop: Callable[[], bool] | None = None,
                 confusion: ConfusionMatrix | None = None) -> dict[str, float] | None:
        """Sample-weighted mean loss and loss parts, and the metrics, of `validation_step` over
        `batches`; None when `stop()` turned true after a batch (a stop signal). Under torchrun
        every process passes its own share of the data and gets the values over all of it.
        `confusion` also counts the predictions (test.py; one process)."""
        metrics = EpochMetrics(self.metric_fns, self.device, self.loss_parts)
        with self._evaluating(), self.mechanics.autocast():
            for batch in batches:
                batch = self.to_device(batch)
                step = step_output(self.validation_step(batch), "validation_step")
                metrics.update(step, self.batch_size(batch))
                if confusion is not None:
                    confusion.update(step.output, step.target)
                for callback in self.callbacks:
                    callback.on_validation_batch_end(self)
                if stop is not None and stop():
                    return None
        metrics.all_reduce()  # torchrun: over every process's share of `batches`
        return metrics.result()

    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        """Validation; a stop signal ends it early, and the checkpoint then holds the point
        before it (with the generators as they were, as loading data may draw from them)."""
        rng_state = get_rng_state()
        # under torchrun a signal is agreed on after validation (no collectives inside it)
        stop = None if distributed.active() else lambda: self.stop_signals.requested
        loader = self.valid_data_loader
        with progress_bar(self.bars, len(loader), f"epoch {epoch} validation",
                          unit="batch") as bar:
            log = self.evaluate(counted(loader, bar), stop=stop)
        if log is None:
            self.position_rng_state = rng_state
            raise StopRequested(self.stop_signals.received)
        return log

    # ------------------------------------------------------------------ resume positions
    def epoch_state(self) -> dict:
        """The epoch's running sums and metric states over every process, and what its
        position means."""
        return {"train_metrics": self.train_metrics.state_dict(), **self._position()}

    def load_epoch_state(self, state: dict) -> None:
        """The epoch's running metric sums; the position in it only means the same batches
        with the same global batch size and epoch length (else a `ConfigError`)."""
        check_position(state, self._position())
        # the sums are of every process: one process carries them on, the others start at 0
        self.train_metrics.load_state_dict(state.get("train_metrics") or {"sums": {},
                                                                          "counts": {}},
                                           self.device, main=distributed.is_main())

    def _position(self) -> dict:
        return position(self.data_loader.batch_size, distributed.world_size(),
                        len(self.data_loader), self.len_epoch, self.accum)

    def _step_groups(self, epoch: int, start: int) -> Iterator[list]:
        """Lists of `grad_accum_steps` micro-batches, one per optimizer step, from step `start`
        of `epoch` on; a pass's last list may be shorter."""
        batches = self._epoch_batches(epoch, start * self.accum, (self.len_epoch - start) *
                                      self.accum if self.iteration_based else None)
        while group := list(itertools.islice(batches, self.accum)):
            yield group

    def _epoch_batches(self, epoch: int, start: int = 0, count: int | None = None) -> Iterator:
        """The (micro-)batches of `epoch` after its first `start`, in an order that depends only
        on the seed and `epoch` — `count` of them cycling through the data (iteration-based), or
        the rest of one pass; the skipped ones are skipped by the sampler, not loaded."""
        if count is not None and count <= 0 or count is None and start >= len(self.data_loader):
            return iter(())
        skip = 0
        if isinstance(self.data_loader, BaseDataLoader):
            self.data_loader.set_epoch(epoch, start)
        else:
            set_epoch = getattr(self.data_loader, "set_epoch", None) or \
                getattr(getattr(self.data_loader, "sampler", None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
            skip = start  # a loader of another kind can only be read past the seen batches
            if skip:
                self.logger.warning("%s cannot start mid-epoch: reading past %d batches.",
                                    type(self.data_loader).__name__, skip)
        if count is not None:
            return itertools.islice(inf_loop(self.data_loader), skip, skip + count)
        return itertools.islice(iter(self.data_loader), skip, None)

    def _log_progress(self, epoch: int, loss: Tensor, rates: dict[str, float], bar) -> None:
        """The loss, samples/s since the last log step and learning rates `rates`: in the
        bar's postfix or a log line, and to TensorBoard. Reads the loss back: a host sync."""
        if not distributed.is_main():  # only rank 0 logs: no host sync elsewhere
            return
        loss_value = loss.item()
        now, samples = time.monotonic(), self._epoch_samples
        speed = (samples - self._window[1]) / (now - self._window[0]) \
            if now > self._window[0] else None
        self._window = (now, samples)
        postfix = step_postfix(loss_value, speed, list(rates.values()))
        if bar is not None:
            bar.set_postfix_str(postfix, refresh=False)
        else:
            step = self.epoch_step
            self.logger.debug("Train epoch %d [%d/%d (%.0f%%)] %s", epoch, step, self.len_epoch,
                              100.0 * step / self.len_epoch, postfix)
        scalars = {"loss/train_step": loss_value, **rates,
                   **(self.watch.scalars() if self.watch.enabled else {})}
        if speed is not None:
            scalars["speed/samples_per_s"] = speed
        self.writer.add_scalars(scalars, self.global_step)
