"""The epoch loop: monitoring, early stopping, checkpoints and resume."""
import os
import shlex
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from logger.progress import display_path, epoch_table, format_duration
from logger.visualization import TensorboardWriter
from trainer.checkpoint import (FORMAT_VERSION, INTERRUPTED_NAME, load_checkpoint,
                                load_model_state, prune_checkpoints, remove_partial_writes,
                                save_checkpoint, unwrap_model)
from trainer.settings import TrainerSettings
from utils import distributed
from utils.errors import ConfigError
from utils.interrupts import StopSignals, TrainingInterrupted, signal_name
from utils.names import callable_name
from utils.seeding import derive_seed, get_rng_state, seed_everything, set_rng_state
from utils.files import atomic_link


metric_name = callable_name  # the name a metric is logged under

class StopRequested(Exception):
    """Raised by `_train_epoch` after an optimizer step when a stop signal came in."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class BaseTrainer(ABC):
    """Runs `_train_epoch` for each epoch, tracks the monitored metric, saves and resumes.

    Reads `config["trainer"]` once, here, into `self.settings`. The constructor only stores:
    `resume`/`load_weights` and `train` are the explicit actions.

    Under torchrun every process runs the loop; rank 0 alone writes (checkpoints, TensorBoard)
    and its decisions (best model, early stop) are every process's.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metric_fns: Sequence[Callable],
                 optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer] | None,
                 config, lr_scheduler=None):
        """`optimizer`: one, or several by name (`config["optimizers"]`); `lr_scheduler`: None,
        one, or by the name of the optimizer it schedules."""
        self.config = config
        self.settings = TrainerSettings.from_config(config["trainer"])
        self.logger = config.get_logger("trainer", self.settings.verbosity)
        self.model = model
        self.criterion = criterion
        self.metric_fns = list(metric_fns)
        # by name; one optimizer (the `optimizer` block) is named ""
        self.optimizers = dict(optimizer) if isinstance(optimizer, dict) else \
            ({"": optimizer} if optimizer is not None else {})
        # the optimizer when there is one (also one named in `optimizers`)
        self.optimizer = next(iter(self.optimizers.values())) if len(self.optimizers) == 1 \
            else None
        self.lr_schedulers = {name: scheduler for name, scheduler in
                              (lr_scheduler.items() if isinstance(lr_scheduler, dict)
                               else [("", lr_scheduler)]) if scheduler is not None}
        self.lr_scheduler = next(iter(self.lr_schedulers.values()), None) \
            if len(self.optimizers) == 1 else None
        # "epoch": step a scheduler after each epoch; "step": after each optimizer step
        self.scheduler_intervals = {name: (optimizer_block(config.config, name, "lr_scheduler")
                                           or {}).get("interval", "epoch")
                                    for name in self.lr_schedulers}
        self.scheduler_interval = self.scheduler_intervals.get("", "epoch")
        self.scaler: torch.amp.GradScaler | None = None  # set by a trainer that uses fp16
        self.monitor = self.settings.parsed_monitor
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
        self.monitor_best = self.monitor.worst
        self.not_improved_count = 0
        self.best_epoch: int | None = None  # the epoch of monitor_best
        self.best_log: dict[str, float] = {}  # every value logged in that epoch
        # per-epoch numbers a trainer measures besides the log (`samples_per_s`)
        self.epoch_stats: dict[str, float] = {}
        self.last_saved: Path | None = None  # the newest epoch checkpoint written
        self.last_epoch, self.last_log = 0, {}  # the newest epoch trained and its values

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
        keys = self.expected_log_keys()
        if self.monitor.enabled and self.monitor.metric not in keys:
            raise ConfigError(f"trainer.monitor: {self.monitor.metric!r} is not a logged value "
                              f"(one of: {', '.join(keys)})")

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """Train from `start_epoch` to `settings.epochs`, saving and stopping as configured.

        SIGINT / SIGTERM stop it after the current optimizer step with a resumable checkpoint
        (`TrainingInterrupted`); a non-finite loss stops it without saving (`TrainingDiverged`).
        """
        epochs = self.settings.epochs
        if self.nothing_to_train():
            return
        self.position_rng_state = None
        main = distributed.is_main()
        for leftover in remove_partial_writes(self.checkpoint_dir) if main else ():
            self.logger.info("Removed %s, left half-written by a killed run.", leftover.name)
        self.writer = TensorboardWriter(self.config.log_dir, self.settings.tensorboard and main)
        # a resumed run drops the points an interrupted run logged after its checkpoint
        self.writer.open(purge_step=self.global_step + 1 if self.global_step > 0 else None)
        self.writer.add_layout(key for key in self.expected_log_keys() if not
                               key.startswith("val_"))
        started, first_epoch = time.monotonic(), self.start_epoch
        try:
            with self.stop_signals:
                self._train_epochs(epochs)
            self._write_hparams()
        finally:
            self.writer.close()
        self._report_end(first_epoch, self.last_epoch, time.monotonic() - started)

    def _report_end(self, first_epoch: int, last_epoch: int, seconds: float) -> None:
        """How training went, where its best model is and how to test it."""
        epochs = f"epoch {first_epoch}" if first_epoch == last_epoch else \
            f"epochs {first_epoch}-{last_epoch}"
        self.logger.info("Finished training (%s) in %s.", epochs, format_duration(seconds))
        best = self.checkpoint_dir / "model_best.pth"
        # a checkpoint from before best_epoch was saved: the best is known, its epoch not
        if self.monitor.enabled and (self.best_epoch is not None or best.is_file()):
            tested = best
            at_epoch = f" at epoch {self.best_epoch}" if self.best_epoch is not None else ""
            self.logger.info("Best %s: %s%s, saved as %s", self.monitor.metric,
                             f"{self.monitor_best:.6f}", at_epoch, display_path(tested))
        else:
            tested = self.last_saved
            self.logger.info("Last checkpoint: %s", display_path(tested))
        self.logger.info("Test it with: python test.py -r %s", shlex.quote(display_path(tested)))

    def _write_hparams(self) -> None:
        """The HParams entry: the config against the best epoch's values (the last epoch's
        without a monitored metric), and the epoch they are from."""
        if not self.writer.active:
            return
        metrics = dict(self.best_log) if self.best_epoch is not None else dict(self.last_log)
        metrics["epoch"] = self.best_epoch if self.best_epoch is not None else self.last_epoch
        self.writer.add_hparams(self.config.config, metrics, self.global_step)

    def nothing_to_train(self) -> bool:
        """True, with a warning, when the resumed checkpoint is already at `trainer.epochs`."""
        if self.start_epoch <= self.settings.epochs:
            return False
        self.logger.warning("Nothing to train: the checkpoint is at epoch %d and trainer.epochs is "
                            "%d (raise it with --epochs).", self.start_epoch - 1,
                            self.settings.epochs)
        return True

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
            improved = self._update_monitor(log, epoch)
            self.last_log, self.last_epoch = log, epoch
            self._report_epoch(epoch, log, improved, time.monotonic() - started)
            stop = 0 < self.settings.early_stop <= self.not_improved_count
            saved = None
            if epoch % self.settings.save_period == 0 or epoch == epochs or stop:
                saved = self._save_epoch_checkpoint(epoch)
            if improved:
                self._save_best(epoch, saved)
            if stop:
                self.logger.info("%s did not improve for %d epochs: early stop.",
                                 self.monitor.metric, self.settings.early_stop)
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
        path = saved or self.checkpoint_dir / INTERRUPTED_NAME
        if saved is None:
            self._save_checkpoint(epoch, path, step)
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        message = (f"Stopped by {signal_name(signum)} at {where} (global step "
                   f"{self.global_step}). Resume with: python train.py -r {path}")
        self.logger.warning(message)
        raise TrainingInterrupted(signum, message)

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

    def _update_monitor(self, log: dict[str, float], epoch: int) -> bool:
        """Whether this epoch improved the monitored metric; updates the best and the counter."""
        if not self.monitor.enabled:
            return False
        value = log[self.monitor.metric]
        if self.monitor.improved(value, self.monitor_best):
            self.monitor_best, self.best_epoch, self.best_log = value, epoch, dict(log)
            self.not_improved_count = 0
            return True
        self.not_improved_count += 1
        return False

    def _report_epoch(self, epoch: int, log: dict[str, float], improved: bool,
                      seconds: float) -> None:
        """The epoch table on the console and in the log file; the epoch's means and time
        (and every `log_histograms` epochs the weights and gradients) to TensorBoard."""
        speed = self.epoch_stats.get("samples_per_s")
        self.logger.info("Epoch %d/%d  %s%s", epoch, self.settings.epochs,
                         format_duration(seconds), f", {speed:,.0f} samples/s" if speed else "")
        for row in epoch_table(log, self.monitor.metric, improved):
            self.logger.info(row)
        scalars = {f"{key[4:]}/valid" if key.startswith("val_") else f"{key}/train": value
                   for key, value in log.items()}
        scalars["time/epoch_s"] = seconds  # the learning rate: at each log step, as it was used
        self.writer.add_scalars(scalars, self.global_step)
        every = self.settings.log_histograms
        if every and epoch % every == 0 and self.writer.active:
            model = unwrap_model(self.model)
            self.writer.add_histograms(((f"weights/{name}", p) for name, p in
                                        model.named_parameters()), self.global_step)
            self.writer.add_histograms(((f"gradients/{name}", p.grad) for name, p in
                                        model.named_parameters() if p.grad is not None),
                                       self.global_step)

    def learning_rates(self) -> dict[str, float]:
        """`{"learning_rate": lr}`; with several parameter groups one per group
        (`learning_rate/group1`, ...), with several optimizers one per optimizer
        (`learning_rate/generator`): TensorBoard tags."""
        rates = {}
        for name, optimizer in self.optimizers.items():
            tag = f"learning_rate/{name}" if name else "learning_rate"
            groups = optimizer.param_groups
            if len(groups) == 1:
                rates[tag] = float(groups[0]["lr"])
            else:
                rates.update({f"{tag}/group{index}": float(group["lr"])
                              for index, group in enumerate(groups)})
        return rates

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int = 0) -> dict:
        """Everything needed to continue training exactly, as plain data: `epoch` epochs done
        and, for a run stopped mid-epoch, `step` optimizer steps into the next one. Under
        torchrun every process calls it (it gathers from all of them)."""
        rng_states = distributed.gathered(self.position_rng_state or get_rng_state())
        return {
            "format_version": FORMAT_VERSION,
            "arch": arch if isinstance(arch := self.config["arch"], str) else arch["type"],
            "epoch": epoch,
            "epoch_step": step,
            "epoch_state": self.epoch_state() if step else None,
            "global_step": self.global_step,
            "state_dict": unwrap_model(self.model).state_dict(),
            "optimizer": self._by_name({name: optimizer.state_dict()
                                        for name, optimizer in self.optimizers.items()}),
            "param_group_names": self._by_name({name: self.param_group_names(optimizer)
                                                for name, optimizer in self.optimizers.items()}),
            "lr_scheduler": self._by_name({name: self.lr_schedulers[name].state_dict()
                                           if name in self.lr_schedulers else None
                                           for name in self.optimizers}),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitor_best": self.monitor_best,
            "not_improved_count": self.not_improved_count,
            "best_epoch": self.best_epoch,
            "best_log": self.best_log,
            "rng_state": rng_states[0],
            # under torchrun every process's generators, by rank
            "rng_states": rng_states if len(rng_states) > 1 else None,
            "config": self.config.config,
        }

    def _by_name(self, values: dict):
        """A checkpoint entry: the one optimizer's value, or several optimizers' by name."""
        return values[""] if list(values) == [""] else (values or None)

    def epoch_state(self) -> dict:
        """What a checkpoint taken mid-epoch needs besides the model and optimizer to finish
        the epoch exactly (the running sums of the epoch's metrics); plain data."""
        return {}

    def load_epoch_state(self, state: dict) -> None:
        """Restore `epoch_state()` from a checkpoint taken mid-epoch."""

    def _save_checkpoint(self, epoch: int, path: os.PathLike, step: int = 0) -> None:
        """Write the training state to `path` (rank 0; the others contribute to the state)."""
        state = self.state(epoch, step)
        # the others wait for the write: a process that stopped early would make torchrun
        # stop rank 0 in the middle of it
        with distributed.all_or_none("saving a checkpoint"):
            if distributed.is_main():
                save_checkpoint(state, path)
                self.logger.info("Saving checkpoint: %s ...", path)

    def _save_best(self, epoch: int, saved: Path | None) -> None:
        """`model_best.pth`: a hard link to this epoch's checkpoint when there is one (the same
        bytes; no second write), else its own file."""
        path = self.checkpoint_dir / "model_best.pth"
        linked = distributed.is_main() and saved is not None and atomic_link(saved, path)
        if distributed.from_main(linked):
            self.logger.info("Saving checkpoint: %s ...", path)
            return
        self._save_checkpoint(epoch, path)

    def _save_epoch_checkpoint(self, epoch: int) -> Path:
        """`checkpoint-epochN.pth`; then the interrupted checkpoint it supersedes and, with
        `keep_last`, the oldest epoch checkpoints go."""
        path = self.checkpoint_dir / f"checkpoint-epoch{epoch}.pth"
        self._save_checkpoint(epoch, path)
        self.last_saved = path
        if not distributed.is_main():
            return path
        (self.checkpoint_dir / INTERRUPTED_NAME).unlink(missing_ok=True)
        if self.settings.keep_last:
            for old in prune_checkpoints(self.checkpoint_dir, self.settings.keep_last,
                                         protect=self.config.resume):
                self.logger.debug("Removed %s (trainer.keep_last: %d)", old.name,
                                  self.settings.keep_last)
        return path

    def resume(self, path: os.PathLike) -> None:
        """Continue exactly where the checkpoint at `path` stopped."""
        checkpoint = load_checkpoint(path)
        load_model_state(self.model, checkpoint["state_dict"], path)
        self.start_epoch = checkpoint["epoch"] + 1
        self.start_step = checkpoint.get("epoch_step", 0)
        if self.start_step:
            self.load_epoch_state(checkpoint.get("epoch_state") or {})
        self.global_step = checkpoint.get("global_step", 0)
        self.monitor_best = checkpoint.get("monitor_best", self.monitor.worst)
        self.not_improved_count = checkpoint.get("not_improved_count", 0)
        self.best_epoch = checkpoint.get("best_epoch")
        self.best_log = checkpoint.get("best_log") or {}
        saved = checkpoint["config"]
        for name, optimizer in self.optimizers.items():
            self._restore_optimizer(name, optimizer, checkpoint, saved)
        for name, scheduler in self.lr_schedulers.items():
            state = _entry(checkpoint.get("lr_scheduler"), name)
            saved_block = optimizer_block(saved, name, "lr_scheduler") or {}
            if state is not None and saved_block.get("type") == \
                    optimizer_block(self.config.config, name, "lr_scheduler")["type"]:
                self._restore_scheduler(name, scheduler, state, saved)
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self._restore_rng(checkpoint)

    def param_group_names(self, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        """The names of the parameters in each group of `optimizer` (what `arch.freeze` and
        `optimizer.param_groups` decide), saved so that a resume can tell they still match."""
        names = {id(p): name for name, p in unwrap_model(self.model).named_parameters()}
        return [[names.get(id(p), "?") for p in group["params"]]
                for group in optimizer.param_groups]

    def _restore_optimizer(self, name: str, optimizer: torch.optim.Optimizer, checkpoint: dict,
                           saved_config: dict) -> None:
        """The checkpoint's state of optimizer `name` when it fits (same type, the same
        parameters in the same groups), then the args the config changed since:
        `optimizer.args` in every group that does not set them itself, a group's own options
        in that group (`--lr` on resume wins)."""
        state = _entry(checkpoint.get("optimizer"), name)
        block = optimizer_block(self.config.config, name)
        saved_block = optimizer_block(saved_config, name) or {}
        groups = block.get("param_groups") or []
        saved_names = _entry(checkpoint.get("param_group_names"), name)  # older: group sizes
        same_groups = state is not None and (
            saved_names == self.param_group_names(optimizer) if saved_names is not None else
            [len(g["params"]) for g in state.get("param_groups", [])] ==
            [len(g["params"]) for g in optimizer.param_groups])
        if saved_block.get("type") != block["type"] or not same_groups:
            self.logger.warning("Warning: the %s type, or which parameters it trains in which "
                                "group (arch.freeze, optimizer.param_groups), differs from the "
                                "checkpoint's; its state is not restored.",
                                f"optimizer {name!r}" if name else "optimizer")
            return
        optimizer.load_state_dict(state)
        saved_groups = saved_block.get("param_groups") or []
        changed_args = changed_args_of(block, saved_block)
        first = len(optimizer.param_groups) - len(groups)  # 1 with a default group
        for index, group in enumerate(optimizer.param_groups):
            own = groups[index - first] if index >= first else {}
            before = saved_groups[index - first] if 0 <= index - first < len(saved_groups) else {}
            changed = {key: value for key, value in changed_args.items() if key not in own}
            changed.update({key: value for key, value in own.items()
                            if key != "params" and before.get(key) != value})
            changed = {key: value for key, value in changed.items() if key in group}
            group.update(changed)
            if changed:
                where = [f"optimizer {name!r}"] if name else []
                if len(optimizer.param_groups) > 1:
                    where.append(f"group {index}")
                self.logger.info("optimizer args changed since the checkpoint: %s%s", changed,
                                 f" ({', '.join(where)})" if where else "")

    def _restore_rng(self, checkpoint: dict) -> None:
        """This process's generators as the checkpoint saved them: by rank when it was taken
        with as many processes; with another number of processes rank 0 takes the saved first
        state and the others fresh streams derived from the seed, rank and step."""
        states = checkpoint.get("rng_states") or [checkpoint.get("rng_state")]
        rank = distributed.rank()
        if len(states) != distributed.world_size() and rank > 0:
            seed_everything(derive_seed(self.config.get("seed", 0), rank, self.global_step))
            return
        state = states[rank] if len(states) == distributed.world_size() else states[0]
        if state is not None:
            set_rng_state(state)

    def _restore_scheduler(self, name: str, scheduler, state: dict, saved_config: dict) -> None:
        """The checkpoint's scheduler state; with args changed since (`total_steps` raised on
        resume), the scheduler built from the new args continues from the checkpoint's step
        instead: schedules such as OneCycleLR derive their phases from their args."""
        changed = changed_args_of(optimizer_block(self.config.config, name, "lr_scheduler"),
                                  optimizer_block(saved_config, name, "lr_scheduler") or {})
        if not changed:
            scheduler.load_state_dict(state)
            return
        for key in ("last_epoch", "_step_count", "_last_lr"):
            if key in state:
                setattr(scheduler, key, state[key])
        self.logger.info("lr_scheduler args changed since the checkpoint: %s; the schedule "
                         "continues from step %s with them.", changed, state.get("last_epoch"))

    def load_weights(self, path: os.PathLike) -> None:
        """Fine-tuning: the checkpoint's weights; epochs, optimizer and scheduler start fresh."""
        checkpoint = load_checkpoint(path)
        load_model_state(self.model, checkpoint["state_dict"], path)



def optimizer_block(config: dict, name: str, part: str = "") -> dict | None:
    """The config block of optimizer `name` ("" for the one `optimizer` block), or with `part`
    ("lr_scheduler") the block of its scheduler; None when absent."""
    if not name:
        block = config.get(part or "optimizer")
    else:
        block = (config.get("optimizers") or {}).get(name)
        block = block.get(part) if part and isinstance(block, dict) else block
    return block if isinstance(block, dict) else None


def changed_args_of(block: dict, saved_block: dict) -> dict:
    """The `args` of `block` whose values differ from those of `saved_block`."""
    saved_args = saved_block.get("args", {})
    return {key: value for key, value in block.get("args", {}).items()
            if saved_args.get(key) != value}


def _entry(value, name: str):
    """A checkpoint entry for optimizer `name`: the value itself for the one optimizer ("")
    of a checkpoint that has one, else the value under `name`."""
    if not name:
        return value
    return value.get(name) if isinstance(value, dict) else None
