"""What a run tells the person training: the epoch table on the console and in the log file,
TensorBoard's scalars and histograms, the summary at the end (where the best model is, how to
test it) and the HParams entry. `EpochReports` is a part of `BaseTrainer`: it reads the
trainer's `logger`, `writer`, `settings`, `monitor`, `best`, `saver` and optimizers."""
import shlex

from logger.progress import display_path, epoch_table, format_duration
from utils.weights import unwrap_model


class EpochReports:
    """The reporting of `BaseTrainer` (a part of it, not a class of its own)."""

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

    def _report_end(self, first_epoch: int, last_epoch: int, seconds: float) -> None:
        """How training went, where its best model is and how to test it."""
        epochs = f"epoch {first_epoch}" if first_epoch == last_epoch else \
            f"epochs {first_epoch}-{last_epoch}"
        self.logger.info("Finished training (%s) in %s.", epochs, format_duration(seconds))
        best = self.saver.best_path
        # named only when it is there: a run branched off another has its best epoch but not
        # (before it improves on it) the file; a checkpoint from before best_epoch was saved
        # has the file but not the epoch
        if self.monitor.enabled and best.is_file():
            tested = best
            at_epoch = f" at epoch {self.best.epoch}" if self.best.epoch is not None else ""
            self.logger.info("Best %s: %s%s, saved as %s", self.monitor.metric,
                             f"{self.best.value:.6f}", at_epoch, display_path(tested))
        else:
            tested = self.saver.last_saved
            self.logger.info("Last checkpoint: %s", display_path(tested))
        self.logger.info("Test it with: python test.py -r %s", shlex.quote(display_path(tested)))

    def _write_hparams(self) -> None:
        """The HParams entry: the config against the best epoch's values (the last epoch's
        without a monitored metric), and the epoch they are from."""
        if not self.writer.active:
            return
        metrics = dict(self.best.log) if self.best.epoch is not None else dict(self.last_log)
        metrics["epoch"] = self.best.epoch if self.best.epoch is not None else self.last_epoch
        self.writer.add_hparams(self.config.config, metrics, self.global_step)

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
