"""The epoch loop: train an epoch, step the schedulers, track the best, save, stop.

The parts it drives live beside it: `CheckpointSaver` (which files, when), `BestTracker` (the
monitored value), `base.resume` (a checkpoint's state into a possibly changed config).
"""
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from base.checkpoint_saver import CheckpointSaver
from base.monitoring import BestTracker
from base.reports import EpochReports
from base.resume import (by_name, optimizer_block, param_group_names, restore_optimizer,
                         restore_rng, restore_scaler, restore_scheduler)
from base.run_folder import resume_command
from base.settings import LoopSettings
from config.names import callable_name
from logger.visualization import TensorboardWriter
from utils import distributed
from utils.checkpoint import FORMAT_VERSION, load_checkpoint
from utils.errors import CheckpointError, ConfigError
from utils.interrupts import StopSignals, TrainingInterrupted, signal_name
from utils.seeding import get_rng_state
from utils.weights import load_model_state, unwrap_model

metric_name = callable_name  # the name a metric is logged under


class StopRequested(Exception):
    """Raised by `_train_epoch` after an optimizer step when a stop signal came in."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class BaseTrainer(EpochReports, ABC):
    """Runs `_train_epoch` for each epoch, tracks the monitored metric, saves and resumes.

    Reads `config["trainer"]` once, here, into `self.settings` (of `settings_class`). The
    constructor only stores: `resume`/`load_weights` and `train` are the explicit actions.

    Under torchrun every process runs the loop; rank 0 alone writes (checkpoints, TensorBoard)
    and its decisions (best model, early stop) are every process's.
    """

    settings_class = LoopSettings  # a trainer with settings of its own names their class

    def __init__(self, model: nn.Module, criterion: Callable, metric_fns: Sequence[Callable],
                 optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer] | None,
                 config, lr_scheduler=None):
        """`optimizer`: one, or several by name (`config["optimizers"]`); `lr_scheduler`: None,
        one, or by the name of the optimizer it schedules."""
        self.config = config
        self.settings = self.settings_class.from_config(config["trainer"])
        self.logger = config.get_logger("trainer", self.settings.verbosity)
        self.model = model
        self.criterion = criterion
        self.metric_fns = list(metric_fns)
        # by name; one optimizer (the `optimizer` block) is named ""
        self.optimizers, self.lr_schedulers = _named_parts(optimizer, lr_scheduler)
        # the optimizer and its scheduler when there is one (also one named in `optimizers`)
        single = len(self.optimizers) == 1
        self.optimizer = next(iter(self.optimizers.values())) if single else None
        self.lr_scheduler = next(iter(self.lr_schedulers.values()), None) if single else None
        # "epoch": step a scheduler after each epoch; "step": after each optimizer step
        self.scheduler_intervals = {name: (optimizer_block(config.config, name, "lr_scheduler")
                                           or {}).get("interval", "epoch")
                                    for name in self.lr_schedulers}
        self.scheduler_interval = self.scheduler_intervals.get("", "epoch")
        self.scaler: torch.amp.GradScaler | None = None  # set by a trainer that uses fp16
        self.monitor = self.settings.parsed_monitor
        self.best = BestTracker(self.monitor)
        self.saver = CheckpointSaver(lambda: self.checkpoint_dir, self.settings.save_period,
                                     self.settings.keep_last, config.resume, self.logger)
        # writes nothing until train() opens one in the run's log folder
        self.writer = TensorboardWriter(".", enabled=False)

        self.start_epoch = 1
        self.start_step = 0   # steps of start_epoch done before a resume (stopped mid-epoch)
        self.epoch_step = 0   # steps done in the epoch being trained
        self.global_step = 0  # optimizer steps so far; TensorBoard's x axis
        self.stop_signals = StopSignals()  # installed while train() runs
        # the generators' state at the point a stop saves, when work past it (an aborted
        # validation) has drawn from them since
        self.position_rng_state: dict | None = None
        # per-epoch numbers a trainer measures besides the log (`samples_per_s`)
        self.epoch_stats: dict[str, float] = {}
        self.last_epoch, self.last_log = 0, {}  # the newest epoch trained and its values
        # objects with on_epoch_end(trainer, epoch, log) (trainer.callbacks.Callback), and why
        # the run stops before trainer.epochs (early stop, a request: `request_stop`)
        self.callbacks: list = []
        self.stop_reason: str | None = None

    @property
    def checkpoint_dir(self):
        """The run folder; read from the config each time, as `make_run_dirs` may rename it."""
        return self.config.save_dir

    @abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; return the logged values (`loss`, metrics, `val_*`)."""

    def expected_log_keys(self) -> list[str]:
        """The keys `_train_epoch` returns; the monitored metric must be one of them."""
        return ["loss"] + [metric_name(fn) for fn in self.metric_fns]

    def check_monitor(self) -> None:
        """Raise a `ConfigError` before training if the monitored metric will never be logged."""
        problem = self.monitor.unlogged_problem(self.expected_log_keys(), hint="")
        if problem:
            raise ConfigError(problem)

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """Train from `start_epoch` to `settings.epochs`, saving and stopping as configured.

        SIGINT / SIGTERM stop it after the current optimizer step with a resumable checkpoint
        (`TrainingInterrupted`); a non-finite loss stops it without saving (`TrainingDiverged`).
        """
        if self.nothing_to_train():
            return
        self.position_rng_state = None
        self.writer = TensorboardWriter(self.config.log_dir,
                                        self.settings.tensorboard and distributed.is_main())
        # a resumed run drops the points an interrupted run logged after its checkpoint
        self.writer.open(purge_step=self.global_step + 1 if self.global_step > 0 else None)
        self.writer.add_layout(key for key in self.expected_log_keys() if not
                               key.startswith("val_"))
        started, first_epoch = time.monotonic(), self.start_epoch
        try:
            with self.stop_signals:
                self._train_epochs(self.settings.epochs)
            self._write_hparams()
        finally:
            self.writer.close()
        self._report_end(first_epoch, self.last_epoch, time.monotonic() - started)

    def _train_epochs(self, epochs: int) -> None:
        for epoch in range(self.start_epoch, epochs + 1):
            started = time.monotonic()
            try:
                log = self._train_epoch(epoch)
            except StopRequested as stop_request:
                self._stop_on_signal(epoch - 1, self.epoch_step, stop_request.signum)
            self.start_step = 0
            log = distributed.from_main(log)  # the same values on every process, exactly
            self._step_scheduler(log)
            improved = self.best.update(log, epoch)
            self.last_log, self.last_epoch = log, epoch
            self._report_epoch(epoch, log, improved, time.monotonic() - started)
            if 0 < self.settings.early_stop <= self.best.not_improved_count:
                self.request_stop(f"early stop: {self.monitor.metric} did not improve for "
                                  f"{self.settings.early_stop} epochs")
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, log)
            self.stop_reason = distributed.from_main(self.stop_reason)  # rank 0's decision
            stop = self.stop_reason is not None
            saved = self.saver.save_epoch(epoch, lambda: self.state(epoch)) \
                if self.saver.is_due(epoch, epochs, stop) else None
            if improved:
                self.saver.save_best(saved, lambda: self.state(epoch))
            if stop:
                self.logger.info("Stopped after epoch %d: %s.", epoch, self.stop_reason)
                return
            signum = distributed.max_value(self.stop_signals.received or 0)  # any process's
            if signum and epoch < epochs:
                self._stop_on_signal(epoch, 0, signum, saved)
        if self.stop_signals.requested:
            self.logger.info("The signal came during the last epoch's end: training is complete.")

    def _stop_on_signal(self, epoch: int, step: int, signum: int,
                        saved: Path | None = None) -> None:
        """Save where training stands (`epoch` complete, `step` steps into the next), say how to
        resume, and raise `TrainingInterrupted`."""
        path = saved or self.saver.save_interrupted(lambda: self.state(epoch, step))
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        message = (f"Stopped by {signal_name(signum)} at {where} (global step "
                   f"{self.global_step}). Resume with: {resume_command(path)}")
        self.logger.warning(message)
        raise TrainingInterrupted(signum, message)

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

    def _step_scheduler(self, log: dict[str, float]) -> None:
        """The epoch-end scheduler steps (a step-wise scheduler steps after each optimizer
        step, in `_train_epoch`)."""
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

    # ------------------------------------------------------------------ checkpoints
    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int = 0) -> dict:
        """Everything needed to continue training exactly, as plain data: `epoch` epochs done
        and, for a run stopped mid-epoch, `step` optimizer steps into the next one. The sum of
        each part's own state. Under torchrun every process calls it (it gathers)."""
        rng_states = distributed.gathered(self.position_rng_state or get_rng_state())
        model = unwrap_model(self.model)
        return {
            "format_version": FORMAT_VERSION,
            "arch": arch if isinstance(arch := self.config["arch"], str) else arch["type"],
            "epoch": epoch,
            "epoch_step": step,
            "epoch_state": self.epoch_state() if step else None,
            "stop_reason": self.stop_reason,
            "global_step": self.global_step,
            "state_dict": model.state_dict(),
            "optimizer": by_name({name: optimizer.state_dict()
                                  for name, optimizer in self.optimizers.items()}),
            "param_group_names": by_name({name: param_group_names(model, optimizer)
                                          for name, optimizer in self.optimizers.items()}),
            "lr_scheduler": by_name({name: self.lr_schedulers[name].state_dict()
                                     if name in self.lr_schedulers else None
                                     for name in self.optimizers}),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **self.best.state_dict(),
            "rng_state": rng_states[0],
            # under torchrun every process's generators, by rank
            "rng_states": rng_states if len(rng_states) > 1 else None,
            "config": self.config.config,
        }

    def epoch_state(self) -> dict:
        """What a checkpoint taken mid-epoch needs besides the model and optimizer to finish
        the epoch exactly (the running sums of the epoch's metrics); plain data."""
        return {}

    def load_epoch_state(self, state: dict) -> None:
        """Restore `epoch_state()` from a checkpoint taken mid-epoch."""

    def resume(self, path: os.PathLike) -> None:
        """Continue exactly where the checkpoint at `path` stopped."""
        checkpoint = load_checkpoint(path)
        load_model_state(self.model, checkpoint["state_dict"], path)
        self.start_epoch = checkpoint["epoch"] + 1
        self.start_step = checkpoint.get("epoch_step", 0)
        self.global_step = checkpoint.get("global_step", 0)
        self.best.load_state_dict(checkpoint)
        model, config = unwrap_model(self.model), self.config.config
        try:
            if self.start_step:
                self.load_epoch_state(checkpoint.get("epoch_state") or {})
            for name, optimizer in self.optimizers.items():
                restore_optimizer(name, optimizer, checkpoint, config,
                                  param_group_names(model, optimizer), self.logger)
            for name, scheduler in self.lr_schedulers.items():
                steps = checkpoint["epoch"] if self.scheduler_intervals[name] == "epoch" else \
                    checkpoint.get("global_step")
                restore_scheduler(name, scheduler, checkpoint, config, self.logger, steps)
            if self.scaler is not None and checkpoint.get("scaler"):
                restore_scaler(self.scaler, checkpoint["scaler"])
            restore_rng(checkpoint, self.config.get("seed", 0), self.global_step)
        except CheckpointError as error:  # the file's state does not fit: name the file
            raise CheckpointError(f"{path}: {error}") from None

    def load_weights(self, path: os.PathLike) -> None:
        """Fine-tuning: the checkpoint's weights; epochs, optimizer and scheduler start fresh."""
        checkpoint = load_checkpoint(path)
        load_model_state(self.model, checkpoint["state_dict"], path)


def _named_parts(optimizer, lr_scheduler) -> tuple[dict, dict]:
    """The optimizers and their schedulers by name ("" for the one `optimizer` block)."""
    optimizers = dict(optimizer) if isinstance(optimizer, dict) else \
        ({"": optimizer} if optimizer is not None else {})
    schedulers = lr_scheduler.items() if isinstance(lr_scheduler, dict) else \
        [("", lr_scheduler)]
    return optimizers, {name: scheduler for name, scheduler in schedulers
                        if scheduler is not None}
