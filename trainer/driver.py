"""The machinery around the user's step: one driver for training, resume and the dry run.

`Driver` runs the epochs' optimizer steps over groups of micro-batches and calls the seam that
`trainer.trainer.Trainer` implements (`training_step`, `validation_step`, `to_device`,
`batch_size`, `unpack`) — with accumulation and sample weights, DDP's `no_sync`, autocast and
the grad scaler, clipping, the NaN policy, watch hooks, stop signals, resume positions,
progress and the epoch's metrics. Nothing here is meant to be overridden.
"""
import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from base.base_data_loader import BaseDataLoader, release_workers
from base.base_trainer import BaseTrainer, StopRequested, metric_name
from logger.progress import bars_wanted, counted, progress_bar, step_postfix
from logger.visualization import is_image_batch
from trainer.checks import FirstBatchChecks, _image_warning
from trainer.evaluation import ConfusionMatrix
from trainer.metrics import EpochMetrics
from trainer.nan_guard import NanGuard
from trainer.optimizer_step import MicroBatch, StepMachinery
from trainer.positions import DataPositions
from trainer.precision import StepMechanics
from trainer.settings import TrainerSettings
from trainer.step_output import step_output
from trainer.throughput import Throughput
from trainer.watch import Watch
from utils import distributed
from utils.errors import ConfigError, UserError
from utils.seeding import get_rng_state
from utils.weights import unwrap_model


class Driver(FirstBatchChecks, StepMachinery, DataPositions, BaseTrainer):
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
    settings_class = TrainerSettings

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
        self._micro = MicroBatch()  # where the machinery is inside an optimizer step
        self.watch = Watch(unwrap_model(self.model), self.settings.watch)  # hooks: train()
        compile_options = self.settings.compile
        if compile_options is True or isinstance(compile_options, dict):  # {} = the defaults
            options = compile_options if isinstance(compile_options, dict) else {}
            self.model = torch.compile(self.model, **options)  # checkpoints: unwrap_model
        # evaluation runs the model without the DDP wrapper (`train()` adds it): no
        # collectives, so processes may have different numbers of validation batches
        self.eval_model = self.model
        self._refuse_unsupported()
        # tqdm bars on a terminal (rank 0 only), else a log line every log_step steps
        self.bars = bars_wanted(self.settings.progress_bar) and distributed.is_main()
        self.throughput = Throughput()
        self.log_images = self.settings.log_images and distributed.is_main()
        self.first_inputs = None  # two samples' model inputs, set by check_first_batch
        self.model_notes: list[str] = []  # what building the model did (train.py's arch.*)
        self._check_schedule_length()  # the monitored value: once the step's parts are known

    def _refuse_unsupported(self) -> None:
        """What this trainer cannot train, as one line before anything starts."""
        if distributed.active() and not isinstance(self.data_loader, BaseDataLoader):
            raise ConfigError(
                f"data_loader.type: {type(self.data_loader).__name__} is not a BaseDataLoader; "
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

    # ------------------------------------------------------------------ training
    def expected_log_keys(self) -> list[str]:
        keys = ["loss", *(self.loss_parts or ()), *self.metric_names]
        if self.valid_data_loader is not None:
            keys += [f"val_{key}" for key in keys]
        return keys

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

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.epoch = epoch
        if epoch == self.start_epoch and self.start_step:  # resumed mid-epoch
            self.epoch_step = self.start_step
        else:
            self.epoch_step = 0
            self.train_metrics.reset()
        self.throughput.start()
        self.nan_guard.start_epoch()
        first_step = self.epoch_step
        with progress_bar(self.bars, self.len_epoch, f"epoch {epoch}/{self.settings.epochs}",
                          initial=self.epoch_step) as bar:
            self._train_steps(epoch, bar)
        self.nan_guard.check(epoch, self.epoch_step, self.global_step)
        self.nan_guard.check_epoch(epoch, self.epoch_step - first_step)
        self.epoch_stats = self.throughput.epoch_stats()
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
            self.nan_guard.count_step(skipped=outputs is None and not stepped)
            self.watch.recording = False
            self.global_step += 1
            self.epoch_step += 1
            for callback in self.callbacks:
                callback.on_step_end(self)
            self.throughput.add(total)
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

    def _log_images(self, batch) -> None:
        """The epoch's first input batch as an image grid (`trainer.log_images`)."""
        images = self._image_batch(batch)
        if not is_image_batch(images):
            self.logger.warning(_image_warning(images))
            self.log_images = False
            return
        self.writer.add_image_grid("inputs/train", images, self.global_step)

    def _log_progress(self, epoch: int, loss: Tensor, rates: dict[str, float], bar) -> None:
        """The loss, samples/s since the last log step and learning rates `rates`: in the
        bar's postfix or a log line, and to TensorBoard. Reads the loss back: a host sync."""
        if not distributed.is_main():  # only rank 0 logs: no host sync elsewhere
            return
        loss_value = loss.item()
        speed = self.throughput.since_last_read()
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
