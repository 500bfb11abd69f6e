"""The concrete trainer: supervised learning over (data, target) batches."""
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from base.base_data_loader import BaseDataLoader, release_workers
from base.base_trainer import BaseTrainer, StopRequested, metric_name
from logger.progress import bars_wanted, counted, progress_bar, step_postfix
from trainer.evaluation import check_first_batch, evaluate, to_device, track_batch
from trainer.checkpoint import unwrap_model
from trainer.precision import StepMechanics
from trainer.watch import Watch
from utils import distributed
from utils.errors import ConfigError, TrainingDiverged
from utils.interrupts import STOP_SIGNALS
from utils.seeding import get_rng_state
from utils.util import MetricTracker, inf_loop


class Trainer(BaseTrainer):
    """Trains `model` on `data_loader`, validating on `valid_data_loader` after each epoch.

    With `len_epoch` (or `trainer.len_epoch`) an epoch is exactly that many optimizer steps,
    cycling through the data as often as needed; otherwise it is one pass over the data.

    Under torchrun the model is wrapped in DistributedDataParallel: each process trains on its
    share of every global batch, gradients are averaged across processes, each loss weighted
    so that a step equals the single-process step over the whole global batch.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metric_fns: Sequence[Callable],
                 optimizer: torch.optim.Optimizer, config, device: torch.device,
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
        self.metric_names = [metric_name(fn) for fn in self.metric_fns]
        self.train_metrics = MetricTracker("loss", *self.metric_names)
        # whether each step's loss was finite, since the last check (at most log_step steps)
        self._finite = torch.ones(self.settings.log_step, dtype=torch.bool, device=device)
        self._finite_count = 0
        self.mechanics = StepMechanics(self.model, optimizer, device, self.settings.amp,
                                       self.settings.grad_clip_norm)
        self.scaler = self.mechanics.scaler
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
        # tqdm bars on a terminal (rank 0 only), else a log line every log_step steps
        self.bars = bars_wanted(self.settings.progress_bar) and distributed.is_main()
        self._window = (0.0, 0)  # (time, samples) at the last log step: samples/s since then
        self._epoch_samples = 0
        self.log_images = self.settings.log_images and distributed.is_main()
        self.first_inputs: Tensor | None = None  # set by check_first_batch
        self.model_notes: list[str] = []  # what building the model did (train.py's arch.*)
        self.check_monitor()
        self._check_schedule_length()

    def _check_schedule_length(self) -> None:
        """A step-wise schedule with a fixed length (OneCycleLR's total_steps) must cover the
        run: else it fails part-way, after hours."""
        total = getattr(self.lr_scheduler, "total_steps", None)
        needed = self.settings.epochs * self.len_epoch
        if self.scheduler_interval == "step" and isinstance(total, int) and total < needed:
            raise ConfigError(
                f"lr_scheduler.args.total_steps: the schedule has {total} steps but training runs "
                f"{needed} ({self.settings.epochs} epochs x {self.len_epoch} optimizer steps); "
                f"set total_steps to {needed}")

    def expected_log_keys(self) -> list[str]:
        keys = super().expected_log_keys()
        if self.valid_data_loader is not None:
            keys += [f"val_{key}" for key in keys]
        return keys

    def train(self) -> None:
        """Train; under torchrun in DistributedDataParallel, which it wraps the model in first
        (compiled inside DDP, as torch.compile's docs advise; DDP starts from rank 0's
        weights, which resume has loaded in every process alike)."""
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

    def dry_run(self, steps: int = 2, batches: int = 2) -> tuple[list[float], dict | None]:
        """`steps` optimizer steps and `batches` validation batches, exactly as training runs
        them, writing nothing: the losses of the steps and the validation values (None without
        validation data). A loss that is not finite raises `TrainingDiverged`."""
        self._wrap_ddp()
        self.model.train()
        epoch, losses = self.start_epoch, []
        self.epoch_step = self.start_step  # a NaN is reported at its step of the epoch
        try:
            for group in itertools.islice(self._step_groups(epoch, self.start_step), steps):
                total, _ = self._step_total(group)
                stepped = self._train_step(group, total)
                self.epoch_step += 1
                self._check_finite(epoch)
                if stepped is not None:
                    losses.append(stepped[-1][0].item())
            log = None
            if self.valid_data_loader is not None:
                with self.mechanics.autocast():
                    log = evaluate(self.eval_model, itertools.islice(self.valid_data_loader,
                                                                     batches),
                                   self.criterion, self.metric_fns, self.metric_names, self.device)
        finally:
            release_workers(self.data_loader, self.valid_data_loader)
        return losses, log

    def check_first_batch(self) -> None:
        """Fail now, with one clear line, if a batch does not fit model, loss and metrics."""
        loader = self.valid_data_loader
        if loader is None or len(loader) == 0:  # torchrun: this process's share may be empty
            loader = self.data_loader
        data = check_first_batch(self.eval_model, loader, self.criterion, self.metric_fns,
                                 self.device)
        release_workers(loader)
        # two samples, for the model summary (taking a batch later would draw random numbers
        # that exact resume has restored)
        self.first_inputs = data[:2] if isinstance(data, Tensor) else None

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
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
        self._check_finite(epoch)
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
            total, signal = self._step_total(group)
            if signal:  # torchrun: every process stops before the same step
                self._stop(epoch, signal)
            if self.epoch_step == 0 and self.log_images:
                self._log_images(group[0][0])
            log_now = self.epoch_step % self.settings.log_step == 0  # this step is logged
            # hooks record on steps that are logged, and only where TensorBoard is written
            self.watch.recording = self.watch.enabled and distributed.is_main() and log_now
            if self.watch.recording and self.scaler is not None:  # a host sync, on log steps
                self.watch.gradient_scale = self.scaler.get_scale()
            stepped = self._train_step(group, total)
            self.watch.recording = False
            self.global_step += 1
            self.epoch_step += 1
            self._epoch_samples += total
            for loss, output, target in stepped or ():
                track_batch(self.train_metrics, self.metric_fns, self.metric_names, loss, output,
                            target)
            rates = self.learning_rates() if log_now else None  # as used by this step
            if stepped is not None and self.scheduler_interval == "step":
                self.lr_scheduler.step()
            if bar is not None:
                bar.update(1)
            if log_now:
                self._check_finite(epoch)
                if stepped is not None:
                    self._log_progress(epoch, stepped[-1][0], rates, bar)
            if self.stop_signals.requested and not distributed.active():
                self._stop(epoch, self.stop_signals.received)

    def _log_images(self, data: Tensor) -> None:
        """The epoch's first input batch as an image grid (`trainer.log_images`)."""
        if not self.writer.add_image_grid("inputs/train", data, self.global_step):
            self.logger.warning("Warning: trainer.log_images needs image batches (B, C, H, W) "
                                "with 1 or 3 channels; these are %s. No images are logged.",
                                tuple(data.shape))
            self.log_images = False

    def _stop(self, epoch: int, signal: int) -> None:
        """Stop on `signal` where the epoch stands; never with weights a non-finite loss has
        reached."""
        self._check_finite(epoch)
        raise StopRequested(signal)

    def _step_total(self, group: list) -> tuple[int, int | None]:
        """The samples of this optimizer step over every process, and under torchrun the
        signal that stops them all (one agreed before each step: no process is left waiting
        in a collective that the others have stopped calling)."""
        total = sum(target.size(0) for _, target in group)
        if not distributed.active():
            return total, None
        received = self.stop_signals.received
        total, *counts = distributed.sum_counts([total, *(received == s for s in STOP_SIGNALS)])
        return int(total), next((s for s, count in zip(STOP_SIGNALS, counts) if count), None)

    def _train_step(self, group: list, total: int) -> list[tuple[Tensor, Tensor, Tensor]] | None:
        """One optimizer step over a group of micro-batches, each loss weighted by its share of
        the step's `total` samples (so N micro-batches of B step like one batch of N*B, and
        under torchrun K processes like one: DDP averages their gradients, hence the factor
        K); the (loss, output, target) of each, or None when `nan_policy: skip` skipped it."""
        self.optimizer.zero_grad(set_to_none=True)
        processes = distributed.world_size()
        results, finite = [], None
        for index, (data, target) in enumerate(group):
            data, target = to_device(self.device, data, target)
            weight = target.size(0) * processes / total
            # DDP averages gradients in the last micro-batch's backward only
            with self._no_sync() if index < len(group) - 1 else contextlib.nullcontext():
                with self.mechanics.autocast():
                    output = self.model(data)
                    loss = self.criterion(output, target)
                self.mechanics.backward(loss * weight if weight != 1 else loss)
            finite = torch.isfinite(loss) if finite is None else finite & torch.isfinite(loss)
            results.append((loss.detach(), output.detach(), target))  # no .item(): no host sync
        if self.settings.nan_policy == "skip":
            # deciding to skip needs the value on the host, and every process to agree
            bad = distributed.ranks_where(not finite.item())
            if bad:
                where = f" in process {', '.join(map(str, bad))}" if distributed.active() else ""
                losses = ", ".join(str(loss.item()) for loss, _, _ in results)
                self.logger.warning("Skipped step %d: the loss is not finite%s%s.",
                                    self.global_step + 1, where,
                                    "" if where else f" ({losses})")
                return None
        else:  # noted on the device, one copy; read back at log steps and at the epoch's end
            self._finite[self._finite_count] = finite
            self._finite_count += 1
        self.mechanics.step()
        return results

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's `no_sync` (keep gradients local); nothing to skip without DDP."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def _check_finite(self, epoch: int) -> None:
        """Raise `TrainingDiverged` if a loss since the last check was NaN or infinite (on any
        process, under torchrun)."""
        count, self._finite_count = self._finite_count, 0
        if count == 0:
            return
        flags = self._finite[:count]
        first_bad = count if bool(flags.all()) else int((~flags).nonzero()[0])
        first_bad = -distributed.max_value(-first_bad)  # the earliest on any process
        if first_bad == count:
            return
        step_in_epoch = self.epoch_step - count + first_bad + 1
        bad_step = self.global_step - count + first_bad + 1
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {epoch}, step {step_in_epoch} (global "
            f"step {bad_step}); stopped without saving, so the newest checkpoint is the last "
            f"good one. Lower the learning rate, or set trainer.nan_policy to \"skip\".")

    def epoch_state(self) -> dict:
        """The epoch's running sums over every process, and what its position means."""
        totals = MetricTracker("loss", *self.metric_names)
        totals.load_state_dict(self.train_metrics.state_dict(), self.device)
        totals.all_reduce()
        return {"train_metrics": totals.state_dict(),
                "batch_size": self.data_loader.batch_size, "world_size": distributed.world_size(),
                "batches_per_pass": len(self.data_loader),
                "len_epoch": self.len_epoch, "grad_accum_steps": self.accum}

    def load_epoch_state(self, state: dict) -> None:
        """The epoch's running metric sums; the position in it only means the same batches
        with the same global batch size and epoch length."""
        saved = (state.get("batch_size", self.data_loader.batch_size), state.get("world_size", 1))
        now = (self.data_loader.batch_size, distributed.world_size())
        if saved[0] * saved[1] != now[0] * now[1]:
            raise ConfigError(
                f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
                f"{_batch_text(*saved)}; resuming with {_batch_text(*now)} would not continue the "
                f"same epoch. Keep {saved[0] * saved[1]} samples per step{_bs_hint(saved, now)}, "
                f"or resume from an epoch checkpoint")
        passes = (state.get("batches_per_pass", len(self.data_loader)), len(self.data_loader))
        if passes[0] != passes[1]:  # same global batch: only a left-out last batch differs
            raise ConfigError(
                f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
                f"{passes[0]} batches per pass over the data, this run makes {passes[1]} (with "
                f"several processes a last global batch of fewer samples than processes is "
                f"left out); resume from an epoch checkpoint, or with as many processes")
        for key, now, path in (("len_epoch", self.len_epoch, "trainer.len_epoch"),
                               ("grad_accum_steps", self.accum, "trainer.grad_accum_steps")):
            if state.get(key, now) != now:
                raise ConfigError(f"{path}: the checkpoint stopped mid-epoch with {key} "
                                  f"{state[key]}; resuming with {now} would not continue the same "
                                  f"epoch. Keep {state[key]}, or resume from an epoch checkpoint")
        # the sums are of every process: one process carries them on, the others start at 0
        sums = state.get("train_metrics") if distributed.is_main() else None
        self.train_metrics.load_state_dict(sums or {"sums": {}, "counts": {}}, self.device)

    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        """Validation; a stop signal ends it early, and the checkpoint then holds the point
        before it (with the generators as they were, as loading data may draw from them)."""
        rng_state = get_rng_state()
        # under torchrun a signal is agreed on after validation (no collectives inside it)
        stop = None if distributed.active() else lambda: self.stop_signals.requested
        loader = self.valid_data_loader
        with self.mechanics.autocast(), progress_bar(self.bars, len(loader),
                                                     f"epoch {epoch} validation",
                                                     unit="batch") as bar:
            log = evaluate(self.eval_model, counted(loader, bar), self.criterion,
                           self.metric_fns, self.metric_names, self.device, stop=stop)
        if log is None:
            self.position_rng_state = rng_state
            raise StopRequested(self.stop_signals.received)
        return log

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


def _bs_hint(saved: tuple[int, int], now: tuple[int, int]) -> str:
    """` (--bs 32 with 2 processes)`: the per-process batch size that keeps the global one."""
    total, processes = saved[0] * saved[1], now[1]
    return f" (--bs {total // processes} with {processes} process" \
           f"{'es' if processes > 1 else ''})" if total % processes == 0 else ""


def _batch_text(batch_size: int, processes: int) -> str:
    """`batch_size 64`, or `batch_size 32 x 2 processes`."""
    return f"batch_size {batch_size}" + (f" x {processes} processes" if processes > 1 else "")
