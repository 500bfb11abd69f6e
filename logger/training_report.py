"""What a run tells the person training: progress at log steps (the bar's postfix or a log
line, and TensorBoard), the epoch table on the console and in the log file, TensorBoard's
scalars and histograms, the summary at the end (where the best model is, how to test it) and
the HParams entry."""
import shlex
import time

from torch import Tensor

from logger.progress import bars_wanted, display_path, epoch_table, format_duration, step_postfix
from logger.visualization import TensorboardWriter
from utils import distributed


class TrainingReport:
    """Reports a run to `logger` and to TensorBoard (`writer`, written only between
    `open_writer` and `close_writer`, on rank 0); counts the samples trained on (`samples`)
    for samples/s over the epoch and since the last log step."""

    def __init__(self, logger, settings, monitor):
        self.logger = logger
        self.settings = settings
        self.monitor = monitor
        self.is_main = distributed.is_main()
        self.writer = TensorboardWriter(".", enabled=False)  # until open_writer: writes nothing
        self.bars = bars_wanted(settings.progress_bar) and self.is_main  # else log lines
        self.log_images = settings.log_images and self.is_main
        self.start_epoch()

    @property
    def steps_of(self) -> str:
        """What the step counter counts, said when it is not batches: under gradient
        accumulation an optimizer step is several batches."""
        accum = self.settings.grad_accum_steps
        return f" steps of {accum} batches" if accum > 1 else ""

    def open_writer(self, log_dir, global_step: int, train_keys: list[str]) -> None:
        """TensorBoard in `log_dir` (with `trainer.tensorboard`, rank 0): a resumed run at
        `global_step` drops the points an interrupted run logged after its checkpoint;
        `train_keys` lay out the train/valid charts."""
        self.writer = TensorboardWriter(log_dir, self.settings.tensorboard and self.is_main)
        self.writer.open(purge_step=global_step + 1 if global_step > 0 else None)
        self.writer.add_layout(train_keys)

    def close_writer(self) -> None:
        self.writer.close()

    def start_epoch(self) -> None:
        self.started = time.monotonic()
        self.samples = 0  # trained on this epoch: the loop adds each step's
        self.speed = None  # the epoch's samples/s, once its steps are done
        self._last = (self.started, 0)  # (time, samples) at the last log step

    def end_steps(self) -> None:
        """The epoch's training steps are done: its samples/s (validation not counted)."""
        seconds = time.monotonic() - self.started
        self.speed = self.samples / seconds if self.samples and seconds > 0 else None

    def _speed_since_last_read(self) -> float | None:
        now = time.monotonic()
        speed = (self.samples - self._last[1]) / (now - self._last[0]) \
            if now > self._last[0] else None
        self._last = (now, self.samples)
        return speed

    def progress(self, epoch: int, step: int, len_epoch: int, global_step: int,
                 loss: Tensor, rates: dict[str, float], bar, watch) -> None:
        """At a log step: the loss, samples/s since the last log step and the learning rates
        `rates`, in the bar's postfix or a log line, and to TensorBoard (with what `watch`
        recorded). Reads the loss back: a host sync, on rank 0 only."""
        if not self.is_main:
            return
        loss_value = loss.item()
        speed = self._speed_since_last_read()
        postfix = step_postfix(loss_value, speed, list(rates.values()))
        if bar is not None:
            bar.set_postfix_str(postfix, refresh=False)
        else:
            self.logger.debug("Train epoch %d [%d/%d%s (%.0f%%)] %s", epoch, step, len_epoch,
                              self.steps_of, 100.0 * step / len_epoch, postfix)
        scalars = {"loss/train_step": loss_value, **rates,
                   **(watch.scalars() if watch.enabled else {})}
        if speed is not None:
            scalars["speed/samples_per_s"] = speed
        self.writer.add_scalars(scalars, global_step)

    def epoch(self, epoch: int, epochs: int, log: dict[str, float], improved: bool,
              seconds: float, global_step: int, model) -> None:
        """The epoch table on the console and in the log file; the epoch's means and time (and
        every `log_histograms` epochs the weights and gradients of `model`) to TensorBoard."""
        speed = self.speed
        self.logger.info("Epoch %d/%d  %s%s", epoch, epochs,
                         format_duration(seconds), f", {speed:,.0f} samples/s" if speed else "")
        for row in epoch_table(log, self.monitor.metric, improved):
            self.logger.info(row)
        scalars = {f"{key[4:]}/valid" if key.startswith("val_") else f"{key}/train": value
                   for key, value in log.items()}
        scalars["time/epoch_s"] = seconds  # the learning rate: at each log step, as it was used
        self.writer.add_scalars(scalars, global_step)
        every = self.settings.log_histograms
        if every and epoch % every == 0 and self.writer.active:
            self.writer.add_histograms(((f"weights/{name}", p) for name, p in
                                        model.named_parameters()), global_step)
            self.writer.add_histograms(((f"gradients/{name}", p.grad) for name, p in
                                        model.named_parameters() if p.grad is not None),
                                       global_step)

    def end(self, first_epoch: int, last_epoch: int, seconds: float, best, checkpoints) -> None:
        """How training went, where its best model is and how to test it."""
        epochs = f"epoch {first_epoch}" if first_epoch == last_epoch else \
            f"epochs {first_epoch}-{last_epoch}"
        self.logger.info("Finished training (%s) in %s.", epochs, format_duration(seconds))
        best_path = checkpoints.best_path
        # named only when it is there: a run branched off another has its best epoch but not
        # (before it improves on it) the file; a checkpoint from before best_epoch was saved
        # has the file but not the epoch
        if self.monitor.enabled and best_path.is_file():
            tested = best_path
            at_epoch = f" at epoch {best.epoch}" if best.epoch is not None else ""
            self.logger.info("Best %s: %s%s, saved as %s", self.monitor.metric,
                             f"{best.value:.6f}", at_epoch, display_path(tested))
        else:
            tested = checkpoints.last_saved
            self.logger.info("Last checkpoint: %s", display_path(tested))
        self.logger.info("Test it with: python test.py -r %s", shlex.quote(display_path(tested)))

    def hparams(self, config: dict, best, last_epoch: int, last_log: dict,
                global_step: int) -> None:
        """The HParams entry: the config against the best epoch's values (the last epoch's
        without a monitored metric), and the epoch they are from."""
        if not self.writer.active:
            return
        metrics = dict(best.log) if best.epoch is not None else dict(last_log)
        metrics["epoch"] = best.epoch if best.epoch is not None else last_epoch
        self.writer.add_hparams(config, metrics, global_step)

    @staticmethod
    def learning_rates(optimizers: dict) -> dict[str, float]:
        """`{"learning_rate": lr}`; with several parameter groups one per group
        (`learning_rate/group1`, ...), with several optimizers one per optimizer
        (`learning_rate/generator`): TensorBoard tags."""
        rates = {}
        for name, optimizer in optimizers.items():
            tag = f"learning_rate/{name}" if name else "learning_rate"
            groups = optimizer.param_groups
            if len(groups) == 1:
                rates[tag] = float(groups[0]["lr"])
            else:
                rates.update({f"{tag}/group{index}": float(group["lr"])
                              for index, group in enumerate(groups)})
        return rates
