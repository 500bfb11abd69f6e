"""`train.py --profile [STEPS]`: torch.profiler over a few steady-state training steps.

A callback, added only when asked (nothing runs, nothing is imported, when the option is off):
it skips the first `WAIT` steps (the first batches, allocator growth, cuDNN's autotuning,
torch.compile), warms the profiler up for one, records `STEPS`, then writes a trace for
TensorBoard's profile view (and Perfetto / chrome://tracing) in the run's log folder and
prints the top operators. Training goes on as usual; under torchrun rank 0 profiles.
"""
from pathlib import Path

import torch

from base.callbacks import Callback
from utils import distributed

WAIT = 5  # steps left alone before the profiler warms up
TOP = 15  # operators in the table


class StepProfiler(Callback):
    """Profiles `steps` optimizer steps after `WAIT` + 1 (CPU, and CUDA when training on it)."""

    def __init__(self, steps: int):
        self.steps = steps
        self.profiler: torch.profiler.profile | None = None
        self.folder: Path | None = None
        self.done = False

    def on_train_start(self, trainer) -> None:
        if not distributed.is_main():
            return
        self.folder = Path(trainer.config.log_dir) / "profile"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=WAIT, warmup=1, active=self.steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.folder)),
            record_shapes=True)
        self.profiler.start()
        self.started_at = trainer.global_step

    def on_step_end(self, trainer) -> None:
        if self.profiler is None or self.done:
            return
        self.profiler.step()
        if trainer.global_step - self.started_at >= WAIT + 1 + self.steps:
            self._finish(trainer)

    def on_epoch_end(self, trainer, epoch: int, log: dict) -> None:
        if self.profiler is not None and not self.done and epoch >= trainer.settings.epochs:
            self._finish(trainer)  # the run ends before the profiled steps did

    def _finish(self, trainer) -> None:
        self.done = True
        self.profiler.stop()
        profiled = trainer.global_step - self.started_at - WAIT - 1
        if profiled < self.steps:
            trainer.logger.warning(
                "Warning: --profile %d: the run ended after %d of the steps to profile (it "
                "waits %d, warms up 1); no trace was written: train longer (trainer.epochs, "
                "trainer.len_epoch)", self.steps, max(profiled, 0), WAIT)
            return
        sort = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=TOP)
        (self.folder / "top_operators.txt").write_text(table + "\n")
        trainer.logger.info("Profile of %d steps (after %d): the top operators by %s time\n%s\n"
                            "Trace for TensorBoard's profile view (tensorboard --logdir %s) and "
                            "https://ui.perfetto.dev: %s", self.steps, WAIT + 1,
                            sort.split("_")[1].upper(), table, self.folder.parent, self.folder)
