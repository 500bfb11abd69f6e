"""The loop: epochs of optimizer steps through the user's seam, validation, the best epoch,
checkpoints, early stopping and stop signals.

A trainer subclasses `BaseTrainer` through `trainer.trainer.Trainer`, which implements the seam
(`training_step`, `validation_step`, `to_device`, `batch_size`, `unpack`). The loop holds a few
named parts and calls them with arguments: `engine` (one optimizer step: accumulation, DDP, amp,
clipping, NaN policy), `batches` (which batches an epoch reads), `checkpoints` (which files,
when), `best` (the monitored value), `report` (what a person sees); `runs.training_state` turns
them into a checkpoint and back.
"""
import contextlib
import itertools
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from base.base_data_loader import BaseDataLoader, release_workers
from base.settings import TrainerSettings
from logger.progress import counted, progress_bar
from logger.training_report import TrainingReport
from runs.checkpoint_saver import CheckpointSaver
from runs.monitoring import BestTracker
from runs.resume import optimizer_block
from runs.run_folder import resume_command
from runs.training_state import load_training_state, training_state
from step.batches import step_output
from step.engine import StepEngine
from step.evaluation import ConfusionMatrix
from step.first_batch import DryRunResult, check_first_batch, check_schedule_length, image_batch
from step.metrics import EpochMetrics
from step.positions import EpochBatches
from step.watch import Watch
from utils import distributed
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, UserError
from utils.interrupts import StopSignals, TrainingInterrupted, signal_name
from utils.seeding import get_rng_state
from utils.weights import load_model_state, unwrap_model


class StopRequested(Exception):
    """Raised inside an epoch when a stop signal came in (after an optimizer step, or during
    validation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class BaseTrainer(ABC):
    """Trains `model` on `data_loader`, validating on `valid_data_loader` after each epoch,
    through the seam a subclass implements.

    With `len_epoch` (or `trainer.len_epoch`) an epoch is exactly that many optimizer steps,
    cycling through the data as often as needed; otherwise it is one pass over the data. Under
    torchrun the model is wrapped in DistributedDataParallel; every process runs the loop, rank
    0 alone writes, and its decisions (best model, early stop) are every process's.

    Reads `config["trainer"]` once, here, into `self.settings`. The constructor only stores and
    builds parts: `resume` / `load_weights`, `check_first_batch` and `train` are the actions.
    """

    # False: `training_step` calls `self.backward(loss)` and `self.step(name)` itself
    automatic_optimization = True
    # The loop's parts, by attribute: a subclass's own attribute must not replace one.
    PARTS = {"engine": StepEngine, "batches": EpochBatches, "checkpoints": CheckpointSaver,
             "best": BestTracker, "report": TrainingReport, "watch": Watch,
             "train_metrics": EpochMetrics, "stop_signals": StopSignals}

    def __init__(self, model: nn.Module, criterion: Callable | None,
                 metric_fns: Sequence[Callable], optimizer, config, device: torch.device,
                 data_loader: DataLoader, valid_data_loader: DataLoader | None = None,
                 lr_scheduler=None, len_epoch: int | None = None):
        """`optimizer`: one, or several by name (`config["optimizers"]`); `lr_scheduler`: None,
        one, or by the name of the optimizer it schedules."""
        self.config = config
        self.settings = settings = TrainerSettings.from_config(config["trainer"])
        self.logger = config.get_logger("trainer", settings.verbosity)
        self.model, self.criterion, self.device = model, criterion, device
        self.metric_fns = list(metric_fns)
        self.data_loader, self.valid_data_loader = data_loader, valid_data_loader
        # by name; one optimizer (the `optimizer` block) is named ""
        self.optimizers, self.lr_schedulers = _named_parts(optimizer, lr_scheduler)
        single = len(self.optimizers) == 1
        self.optimizer = next(iter(self.optimizers.values())) if single else None
        self.lr_scheduler = next(iter(self.lr_schedulers.values()), None) if single else None
        # "epoch": step a scheduler after each epoch; "step": after each optimizer step
        self.scheduler_intervals = {name: (optimizer_block(config.config, name, "lr_scheduler")
                                           or {}).get("interval", "epoch")
                                    for name in self.lr_schedulers}
        # optimizer steps per epoch (`len_epoch`); a pass's last group of micro-batches may be
        # short
        accum = settings.grad_accum_steps
        self.batches = EpochBatches(data_loader,
                                    len_epoch or settings.len_epoch or -(-len(data_loader) // accum),
                                    accum, bool(len_epoch or settings.len_epoch), self.logger)
        self.engine = StepEngine(self.optimizers, device, settings,
                                 self.automatic_optimization, self.logger)
        self.monitor = settings.parsed_monitor
        self.best = BestTracker(self.monitor)
        self.checkpoints = CheckpointSaver(lambda: self.checkpoint_dir, settings.save_period,
                                           settings.keep_last, config.resume, self.logger,
                                           background=True, resumed=not config.fine_tune)
        # what a person sees: the log, TensorBoard (a writer opened by train()), progress bars
        self.report = TrainingReport(self.logger, settings, self.monitor)
        self.train_metrics = EpochMetrics(self.metric_fns, device)
        self.watch = Watch(unwrap_model(model), settings.watch)  # hooks: only while training
        if settings.compile is True or isinstance(settings.compile, dict):  # {}: the defaults
            # in place, no wrapper: the model itself (DDP wraps it later, as torch.compile's docs
            # advise), or the DataParallel wrapper (its replicas copy the module uncompiled)
            model.compile(**(settings.compile if isinstance(settings.compile, dict) else {}))
        # evaluation runs the model without the DDP wrapper (`train()` adds it): no
        # collectives, so processes may have different numbers of validation batches
        self.eval_model = model
        self.stop_signals = StopSignals()  # installed while train() runs

        self.start_epoch, self.start_step = 1, 0  # where training starts (a resume: later)
        self.epoch, self.epoch_step = 1, 0  # the epoch being trained, and its steps done
        self.global_step = 0  # optimizer steps so far; TensorBoard's x axis
        # the generators' state at the point a stop saves, when work past it (an aborted
        # validation) has drawn from them since
        self.position_rng_state: dict | None = None
        self.last_epoch, self.last_log = 0, {}  # the newest epoch trained and its values
        # what the step logs besides the loss (known from the first batch; None before)
        self.loss_parts: list[str] | None = None
        self.first_inputs = None  # two samples of the model's inputs, for the model summary
        self.model_notes: list[str] = []  # what building the model did (arch.*), for the log
        # Callbacks (base.callbacks.Callback), and why the run stops before trainer.epochs
        # (early stop, a callback's `request_stop`)
        self.callbacks: list = []
        self.stop_reason: str | None = None
        # files the user's trainer depends on (`helper_file`), recorded in the manifest
        self.helper_files: dict[str, dict] = {}
        self._refuse_unsupported()
        check_schedule_length(self)

    # ------------------------------------------------------------------ the seam
    @abstractmethod
    def training_step(self, batch) -> Tensor | dict[str, Tensor]:
        """Forward and loss of one training (micro-)batch (see `trainer.trainer.Trainer`)."""

    @abstractmethod
    def validation_step(self, batch) -> Tensor | dict[str, Tensor]:
        """Forward and loss of one validation or test batch."""

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

    @property
    def checkpoint_dir(self):
        """The run folder; read from the config each time, as `make_run_dirs` may rename it."""
        return self.config.save_dir

    @property
    def len_epoch(self) -> int:
        """Optimizer steps per epoch: `trainer.len_epoch`, or one pass over the data."""
        return self.batches.len_epoch

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 grad scaler (its state goes into checkpoints), or None."""
        return self.engine.scaler

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

    def expected_log_keys(self) -> list[str]:
        """The keys an epoch logs; the monitored metric must be one of them."""
        keys = ["loss", *(self.loss_parts or ()), *self.train_metrics.names]
        if self.valid_data_loader is not None:
            keys += [f"val_{key}" for key in keys]
        return keys

    def check_monitor(self) -> None:
        """Raise a `ConfigError` before training if the monitored metric will never be logged."""
        problem = self.monitor.unlogged_problem(self.expected_log_keys(), hint="")
        if problem:
            raise ConfigError(problem)

    def check_first_batch(self) -> None:
        """Fail now, with one clear line, if a batch does not go through the step, the model,
        the loss and the metrics (`step.first_batch`); learn the step's loss parts."""
        self._refuse_hidden_parts()
        check_first_batch(self)
        self._refuse_hidden_parts()  # what the step itself set

    def _refuse_hidden_parts(self) -> None:
        """A subclass's attribute that hides a method or property of the trainer (`self.step =
        0` hides `step(name)`) or replaces one of its parts (`self.best = 0.9`) would break the
        loop silently: one line naming it instead."""
        for name in vars(self):
            member = getattr(type(self), name, None)
            if not name.startswith("_") and (callable(member) or isinstance(member, property)):
                raise UserError(f"trainer.type: {type(self).__name__} sets self.{name}, which "
                                f"hides the trainer's {name}(); give the attribute another name")
        for name, kind in self.PARTS.items():
            if not isinstance(getattr(self, name, None), kind):
                raise UserError(f"trainer.type: {type(self).__name__} sets self.{name}, which is "
                                f"the trainer's own {kind.__name__}; give the attribute another "
                                f"name")

    # ------------------------------------------------------------------ the epochs
    def train(self) -> None:
        """Train from `start_epoch` to `settings.epochs`, saving and stopping as configured.

        SIGINT / SIGTERM stop it after the current optimizer step with a resumable checkpoint
        (`TrainingInterrupted`); a non-finite loss stops it without saving (`TrainingDiverged`).
        """
        if self.nothing_to_train():
            return
        self._refuse_hidden_parts()
        self.check_monitor()  # check_first_batch checked it, unless it was not called
        self.position_rng_state = None
        started, first_epoch = time.monotonic(), self.start_epoch
        # a resumed run drops the points an interrupted run logged after its checkpoint
        self.report.open_writer(self.config.log_dir, self.global_step,
                                [key for key in self.expected_log_keys()
                                 if not key.startswith("val_")])
        ended_by = None  # the exception that ended training, if one did
        try:
            for callback in self.callbacks:
                callback.on_train_start(self)
            with self._training(), self.stop_signals:
                self._train_epochs(self.settings.epochs)
                self.checkpoints.finish()  # the last checkpoint is on disk before the end
            self.report.hparams(self.config.config, self.best, self.last_epoch, self.last_log,
                                self.global_step)
        except BaseException as error:
            ended_by = error
            raise
        finally:
            self.report.close_writer()
            self._let_the_write_end()
            for callback in self.callbacks:
                callback.on_train_end(self, ended_by)
        self.report.end(first_epoch, self.last_epoch, time.monotonic() - started, self.best,
                        self.checkpoints)

    def _let_the_write_end(self) -> None:
        """On the way out of an error: the checkpoint being written is completed (the
        previous one stays intact either way); its own failure only logged, not raised over
        the error that ended training."""
        try:
            self.checkpoints.wait()
        except Exception as error:  # noqa: BLE001 (why: the first error is the one to report)
            self.logger.error("Also: %s", error)

    def _train_epochs(self, epochs: int) -> None:
        for epoch in range(self.start_epoch, epochs + 1):
            started = time.monotonic()
            try:
                log = self._train_epoch(epoch)
            except StopRequested as stop_request:
                self._stop_on_signal(epoch - 1, self.epoch_step, stop_request.signum)
            self.start_step = 0
            log = distributed.from_main(log)  # the same values on every process, exactly
            self._step_schedulers(log)
            improved = self.best.update(log, epoch)
            self.last_log, self.last_epoch = log, epoch
            self.report.epoch(epoch, epochs, log, improved, time.monotonic() - started,
                              self.global_step, unwrap_model(self.model))
            # the patience runs out: a stop, unless the run ends with this epoch anyway
            if 0 < self.settings.early_stop <= self.best.not_improved_count and epoch < epochs:
                self.request_stop(f"early stop: {self.monitor.metric} did not improve for "
                                  f"{self.settings.early_stop} epochs")
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, log)
            self.stop_reason = distributed.from_main(self.stop_reason)  # rank 0's decision
            stop = self.stop_reason is not None
            # written beside the next epoch's training (runs/checkpoint_saver.py)
            saved = self.checkpoints.save(epoch, lambda done=epoch: self.state(done),
                                          self.checkpoints.is_due(epoch, epochs, stop), improved)
            if stop:
                self.logger.info("Stopped after epoch %d: %s.", epoch, self.stop_reason)
                return
            signum = distributed.max_value(self.stop_signals.poll() or 0)  # any process's
            if signum and epoch < epochs:
                self._stop_on_signal(epoch, 0, signum, saved)
        if self.stop_signals.requested:
            self.logger.info("The signal came during the last epoch's end: training is complete.")

    def _stop_on_signal(self, epoch: int, step: int, signum: int, saved=None) -> None:
        """Save where training stands (`epoch` complete, `step` steps into the next), say how to
        resume, and raise `TrainingInterrupted`: the one place a stop signal ends a run."""
        path = saved or self.checkpoints.save_interrupted(lambda: self.state(epoch, step))
        self.checkpoints.finish()  # written before the process ends
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        message = (f"Stopped by {signal_name(signum)} at {where} (global step "
                   f"{self.global_step}). Resume with: {resume_command(path)}")
        self.logger.warning(message)
        raise TrainingInterrupted(signum, message)

    def helper_file(self, name: str, path) -> Path:
        """A file the run depends on besides its config and checkpoints (a frozen teacher's
        weights named in `trainer.args`): `path`, checked, and recorded in the run's manifest by
        path and SHA-256, so that a resume or `test.py` finding another file says so."""
        from runs.manifest import file_digest

        path = Path(path)
        if not path.is_file():
            raise UserError(f"trainer.args: the helper file {name!r} ({path}) does not exist")
        self.helper_files[name] = {"path": str(path.resolve()), "sha256": file_digest(path)}
        return path

    def request_stop(self, reason: str) -> None:
        """End the run after this epoch (saving it) and say `reason`, which the checkpoint
        keeps (`stop_reason`): a callback's `on_epoch_end` may call it (a pruned trial)."""
        self.stop_reason = self.stop_reason or reason

    def nothing_to_train(self) -> bool:
        """True, with a warning, when the resumed checkpoint is already at `trainer.epochs`."""
        if self.start_epoch <= self.settings.epochs:
            return False
        self.logger.warning("Nothing to train: the checkpoint is at epoch %d and trainer.epochs is "
                            "%d (raise it with --epochs).", self.start_epoch - 1,
                            self.settings.epochs)
        return True

    def _step_schedulers(self, log: dict[str, float]) -> None:
        """The epoch-end scheduler steps (a step-wise scheduler steps after each optimizer
        step); `ReduceLROnPlateau` on the monitored value (else the loss) of `log`."""
        for name, scheduler in self.lr_schedulers.items():
            if self.scheduler_intervals[name] != "epoch":
                continue
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.monitor.metric if self.monitor.enabled else \
                    ("val_loss" if "val_loss" in log else "loss")
                scheduler.step(log[metric])
                continue
            with warnings.catch_warnings():  # resumed after the epoch's last step: no step here
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step")
                scheduler.step()

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        """While training (or a dry run): the model in DDP under torchrun (compiled inside it,
        as torch.compile's docs advise; DDP starts from rank 0's weights, which resume has
        loaded in every process alike), the watch hooks on; afterwards no hook is left and
        the loaders' persistent workers end."""
        wrapped = distributed.active() and not isinstance(self.model,
                                                          nn.parallel.DistributedDataParallel)
        if wrapped:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.watch.enabled and not self.settings.tensorboard:
            self.logger.warning("Warning: trainer.watch writes to TensorBoard only, and "
                                "trainer.tensorboard is off: nothing is watched.")
            self.watch.enabled = False
        if self.watch.enabled:
            self.watch.attach()
        try:
            yield
        finally:
            self.watch.detach()
            release_workers(self.data_loader, self.valid_data_loader)
            if wrapped:  # the wrapper's reducer holds the process group: gone now, not at exit
                self.model = self.model.module  # after the group (an abort, now and then)

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (from `start_step` when resumed mid-epoch) and validate; the logged
        values (`loss`, loss parts, metrics, `val_*`)."""
        self.model.train()
        self.epoch = epoch
        resumed = epoch == self.start_epoch and self.start_step
        self.epoch_step = self.start_step if resumed else 0
        if not resumed:
            self.train_metrics.reset()
        self.report.start_epoch()
        self.engine.nan_guard.start_epoch()
        first_step = self.epoch_step
        with progress_bar(self.report.bars, self.len_epoch,
                          f"epoch {epoch}/{self.settings.epochs}{self.report.steps_of}",
                          initial=self.epoch_step) as bar:
            self._train_steps(epoch, bar)
        self.report.end_steps()
        self.engine.nan_guard.check(epoch, self.epoch_step, self.global_step)
        self.engine.nan_guard.check_epoch(epoch, self.epoch_step - first_step)
        self.train_metrics.all_reduce()  # torchrun: the epoch's means over every process
        log = self.train_metrics.result()
        for callback in self.callbacks:
            callback.on_train_epoch_end(self, epoch)
        if self.valid_data_loader is not None:
            log.update({f"val_{key}": value for key, value in self._valid_epoch(epoch).items()})
        return log

    def _train_steps(self, epoch: int, bar=None, limit: int | None = None,
                     notes: list[str] | None = None) -> list[Tensor]:
        """The epoch's optimizer steps from `epoch_step` on, advancing `bar`. The dry run:
        `limit` steps, no progress written, and what its first step would log as images and
        watch said in `notes`; it gets each step's last micro-batch loss."""
        losses, dry_run = [], notes is not None
        for index, group in enumerate(itertools.islice(
                self.batches.step_groups(epoch, self.epoch_step), limit)):
            first = index == 0 if dry_run else self.epoch_step == 0  # the epoch's, or the dry run's
            # torchrun: this process's signal (or its lost agent), agreed on before the step
            received = self.stop_signals.poll() if self.engine.distributed else None
            sizes, total, signal = self.engine.count(group, self.batch_size, received)
            if signal:  # torchrun: every process stops before the same step
                self._stop(epoch, signal)
            if first and self.report.log_images:
                self._log_images(group[0], notes)
            log_now = self.epoch_step % self.settings.log_step == 0 or dry_run and first
            # hooks record on steps that are logged, and only where TensorBoard is written
            self.watch.recording = self.watch.enabled and log_now and distributed.is_main()
            if self.watch.recording and self.scaler is not None:  # a host sync, on log steps
                self.watch.gradient_scale = self.scaler.get_scale()
            for callback in self.callbacks:
                callback.on_step_start(self)
            result = self.engine.run(self, self.model, group, sizes, total, self.global_step)
            if result.outputs is None and not result.stepped:
                self.engine.nan_guard.count_skipped()
            if dry_run and self.watch.recording:
                notes.append(f"trainer.watch: recorded on the first step: "
                             f"{', '.join(self.watch.scalars())}")
            self.watch.recording = False
            self.global_step += 1
            self.epoch_step += 1
            for callback in self.callbacks:
                callback.on_step_end(self)
            self.report.samples += total
            for step, size in result.outputs or ():
                self.train_metrics.update(step, size)
            rates = self.report.learning_rates(self.optimizers) if log_now else None
            for name in result.stepped:  # step-wise schedules of the optimizers that stepped
                if name in self.lr_schedulers and self.scheduler_intervals[name] == "step":
                    self.lr_schedulers[name].step()
            if bar is not None:
                bar.update(1)
            if log_now:
                self.engine.nan_guard.check(epoch, self.epoch_step, self.global_step)
                if result.outputs is not None and not dry_run:
                    self.report.progress(epoch, self.epoch_step, self.len_epoch, self.global_step,
                                         result.outputs[-1][0].loss, rates, bar, self.watch)
            if dry_run and result.outputs is not None:
                losses.append(result.outputs[-1][0].loss)
            # alone: a signal is acted on after the step (under torchrun: agreed before the
            # next); a process torchrun started alone also watches its agent (`poll`)
            signal = self.stop_signals.received if self.stop_signals.parent is None else \
                self.stop_signals.poll()
            if signal is not None and not self.engine.distributed:
                self._stop(epoch, signal)
        return losses

    def _stop(self, epoch: int, signal: int) -> None:
        """Stop on `signal` where the epoch stands; never with weights a non-finite loss has
        reached."""
        self.engine.nan_guard.check(epoch, self.epoch_step, self.global_step)
        raise StopRequested(signal)

    def _log_images(self, batch, notes: list[str] | None = None) -> None:
        """The epoch's first input batch as an image grid (`trainer.log_images`); the dry run
        says what it would log in `notes`."""
        images, warning = image_batch(self, batch)
        if notes is not None:
            notes.append(warning or f"trainer.log_images: a grid of {min(16, images.size(0))} "
                                    f"images per epoch")
        elif warning:
            self.logger.warning(warning)
            self.report.log_images = False
        else:
            self.report.writer.add_image_grid("inputs/train", images, self.global_step)

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The model the step sees is the evaluation one (no DDP wrapper), in eval mode, without
        gradients, under autocast when `trainer.amp` is on; `backward` and `step` do nothing.
        Restored afterwards."""
        model, was_training = self.model, self.model.training
        self.model = self.eval_model
        self.eval_model.eval()
        try:
            with torch.no_grad(), self.engine.autocast():
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
        with self.evaluating():
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
        with progress_bar(self.report.bars, len(loader), f"epoch {epoch} validation",
                          unit="batch") as bar:
            log = self.evaluate(counted(loader, bar), stop=stop)
        if log is None:
            self.position_rng_state = rng_state
            raise StopRequested(self.stop_signals.received)
        return log

    def dry_run(self, steps: int = 2, batches: int = 2) -> DryRunResult:
        """`steps` optimizer steps and `batches` validation batches through the same loop as
        training (image logging and watch hooks exercised when on), writing nothing. A loss
        that is not finite raises `TrainingDiverged`."""
        self.model.train()
        self.epoch, self.epoch_step = self.start_epoch, self.start_step  # a NaN: at its step
        result = DryRunResult()
        with self._training():
            losses = self._train_steps(self.epoch, limit=steps, notes=result.notes)
            self.engine.nan_guard.check(self.epoch, self.epoch_step, self.global_step)
            result.losses = [loss.item() for loss in losses]
            if self.valid_data_loader is not None:
                result.log = self.evaluate(itertools.islice(self.valid_data_loader, batches))
        return result

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int = 0) -> dict:
        """Everything needed to continue training exactly, as plain data: `epoch` epochs done
        and, for a run stopped mid-epoch, `step` optimizer steps into the next one
        (`runs.training_state`). Under torchrun every process calls it (it gathers)."""
        return training_state(self, epoch, step)

    def resume(self, path) -> None:
        """Continue exactly where the checkpoint at `path` stopped."""
        load_training_state(self, load_checkpoint(path), path)

    def load_weights(self, path) -> None:
        """Fine-tuning: the checkpoint's weights; epochs, optimizer and scheduler start fresh."""
        load_model_state(self.model, load_checkpoint(path)["state_dict"], path)


def _named_parts(optimizer, lr_scheduler) -> tuple[dict, dict]:
    """The optimizers and their schedulers by name ("" for the one `optimizer` block)."""
    optimizers = dict(optimizer) if isinstance(optimizer, dict) else \
        ({"": optimizer} if optimizer is not None else {})
    schedulers = lr_scheduler.items() if isinstance(lr_scheduler, dict) else \
        [("", lr_scheduler)]
    return optimizers, {name: scheduler for name, scheduler in schedulers
                        if scheduler is not None}
