"""`train.py --lr-find [STEPS]`: the learning-rate range test (Leslie Smith's).

The run's own trainer takes STEPS optimizer steps (100 by default) through the training loop,
the learning rate growing exponentially from `LOW` to `HIGH` — every param group's rate scaled
alike, so groups keep their ratios — and stops early once the smoothed loss is 4 times its
lowest, or not finite. Then the weights, the optimizers, the schedulers, the step counters and
the random generators are put back as they were, and nothing of the run is written: the
suggestion is the rate where the smoothed loss fell fastest, to paste as
`-o optimizer.args.lr=...`.
"""
import copy
import math
from dataclasses import dataclass, field

import numpy as np

from base.callbacks import Callback
from utils.errors import TrainingDiverged
from utils.seeding import get_rng_state, set_rng_state

LOW, HIGH = 1e-7, 10.0
SMOOTHING = 0.98  # the loss's exponential moving average, bias-corrected
DIVERGED = 4.0  # the smoothed loss this many times its lowest ends the test
CHUNK = 10  # steps run between two looks at the loss


@dataclass
class RangeTest:
    """The rates tried, the losses they gave (raw and smoothed), and the suggestion."""
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    lowest: float | None = None  # the rate of the lowest smoothed loss
    stopped: str = ""  # why it ended before its steps, if it did


class _Ramp(Callback):
    """Sets each optimizer step's rate: `rate(i)` times each group's ratio to the first."""

    def __init__(self, optimizers: dict, rate):
        self.rate, self.count = rate, 0
        self.ratios = {name: [group["lr"] / optimizer.param_groups[0]["lr"]
                              if optimizer.param_groups[0]["lr"] else 1.0
                              for group in optimizer.param_groups]
                       for name, optimizer in optimizers.items()}
        self.optimizers = optimizers

    def on_step_start(self, trainer) -> None:
        rate = self.rate(self.count)
        for name, optimizer in self.optimizers.items():
            for group, ratio in zip(optimizer.param_groups, self.ratios[name]):
                group["lr"] = rate * ratio
        self.count += 1


def range_test(trainer, steps: int = 100, low: float = LOW, high: float = HIGH) -> RangeTest:
    """Run the range test on `trainer` (built, not yet trained) and leave it as it was."""
    saved = _snapshot(trainer)
    result = RangeTest()
    ramp = _Ramp(trainer.optimizers, lambda i: low * (high / low) ** (i / max(steps - 1, 1)))
    callbacks, trainer.callbacks = trainer.callbacks, [ramp]
    average, best = 0.0, math.inf
    try:
        trainer.model.train()
        epoch = trainer.start_epoch
        trainer.epoch, trainer.epoch_step = epoch, trainer.start_step
        with trainer._training():
            while ramp.count < steps and not result.stopped:
                if trainer.epoch_step >= trainer.len_epoch:  # on into the next epoch's batches
                    epoch += 1
                    trainer.epoch, trainer.epoch_step = epoch, 0
                first = ramp.count
                try:
                    losses = trainer._train_steps(epoch, limit=min(CHUNK, steps - ramp.count),
                                                  notes=[])
                except TrainingDiverged:  # trainer.nan_policy "stop": the rate is too high
                    result.stopped = f"the loss was not finite by lr {ramp.rate(ramp.count - 1):.2e}"
                    break
                for index, loss in enumerate(losses):
                    value = float(loss)
                    rate = ramp.rate(first + index)
                    average = SMOOTHING * average + (1 - SMOOTHING) * value
                    smooth = average / (1 - SMOOTHING ** (len(result.losses) + 1))
                    result.rates.append(rate)
                    result.losses.append(value)
                    result.smoothed.append(smooth)
                    if not math.isfinite(smooth):
                        result.stopped = f"the loss was not finite at lr {rate:.2e}"
                        break
                    best = min(best, smooth)
                    if smooth > DIVERGED * best:
                        result.stopped = (f"the loss grew past {DIVERGED:g} times its lowest "
                                          f"at lr {rate:.2e}")
                        break
                if not losses:
                    break
    finally:
        trainer.callbacks = callbacks
        _restore(trainer, saved)
    _suggest(result)
    return result


def _suggest(result: RangeTest) -> None:
    """The rate where the smoothed loss falls fastest (per decade of rate), before its lowest
    point; the first steps' noisy start left out."""
    finite = [i for i, value in enumerate(result.smoothed) if math.isfinite(value)]
    if len(finite) < 5:
        return
    end = min(finite, key=lambda i: result.smoothed[i])
    result.lowest = result.rates[end]
    start = min(len(finite) // 10, max(end - 2, 0))
    if end - start < 2:
        return
    logs = np.log10(result.rates[start:end + 1])
    slopes = np.gradient(np.asarray(result.smoothed[start:end + 1]), logs)
    # (the lowest point itself, where the curve turns, is not a place it falls)
    result.suggestion = float(result.rates[start + int(np.argmin(slopes[:-1]))])


def _snapshot(trainer) -> dict:
    state = {"model": copy.deepcopy(trainer.model.state_dict()),
             "optimizers": {name: copy.deepcopy(optimizer.state_dict())
                            for name, optimizer in trainer.optimizers.items()},
             "schedulers": {name: copy.deepcopy(scheduler.state_dict())
                            for name, scheduler in trainer.lr_schedulers.items()},
             "counters": (trainer.epoch, trainer.epoch_step, trainer.global_step),
             "generators": get_rng_state()}
    if trainer.scaler is not None:
        state["scaler"] = copy.deepcopy(trainer.scaler.state_dict())
    return state


def _restore(trainer, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    for name, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    for name, scheduler in trainer.lr_schedulers.items():
        scheduler.load_state_dict(state["schedulers"][name])
    trainer.epoch, trainer.epoch_step, trainer.global_step = state["counters"]
    set_rng_state(state["generators"])
    if "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.train_metrics.reset()


def write_curve(result: RangeTest, folder, name: str) -> list:
    """`<name>.csv` (lr, loss, smoothed) and, with matplotlib, `<name>.png` in `folder`."""
    import csv
    import io
    from pathlib import Path

    from utils.files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def table(file):
        text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows(zip(result.rates, result.losses, result.smoothed))
        text.flush()
        text.detach()

    atomic_write(folder / f"{name}.csv", table)
    written = [folder / f"{name}.csv"]
    try:
        import matplotlib
    except ImportError:
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot(result.rates, result.losses, alpha=0.3, label="loss")
    axes.plot(result.rates, result.smoothed, label="smoothed")
    if result.suggestion is not None:
        axes.axvline(result.suggestion, color="red", linestyle="--",
                     label=f"suggested {result.suggestion:.1e}")
    finite = [value for value in result.smoothed if math.isfinite(value)]
    if finite:
        axes.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGED * min(finite)) * 1.1)
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / f"{name}.png", dpi=100)
    plt.close(figure)
    return [*written, folder / f"{name}.png"]
