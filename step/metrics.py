"""An epoch's logged values: the loss, its parts and the metrics, accumulated on the device.

Two kinds of metric:

- a function `metric(output, target) -> 0-d tensor` (`model/metric.py`) is a batch mean; the
  epoch's value is the sample-weighted mean of the batch values (exact for means of per-sample
  values such as accuracy, not for RMSE or F1);
- a `torchmetrics.Metric` (`{"type": "torchmetrics.regression.MeanSquaredError", "args":
  {"squared": false}}`) keeps its own state, updated each batch on the device and computed once
  over the whole epoch (synchronised over processes under torchrun): exact for any metric.
"""
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

from config.names import callable_name
from step.batches import StepOutput, map_tensors
from utils import distributed
from utils.errors import UserError


def is_stateful(metric: Callable) -> bool:
    """Whether `metric` is a `torchmetrics.Metric` (checked without importing torchmetrics,
    which takes seconds, when no config uses it)."""
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(metric, module.Metric)


def read_by(keys: tuple, name: str, step: StepOutput) -> tuple:
    """The output and target metric `name` reads by its block's `output` / `target` `keys`:
    those entries of a dict output and target (two heads); a key None: the whole value."""
    output_key, target_key = keys
    return (_entry(step.output, output_key, name, "output"),
            _entry(step.target, target_key, name, "target"))


def _entry(value, key: str | None, name: str, what: str):
    if key is None:
        return value
    if isinstance(value, dict) and key in value:
        return value[key]
    has = f"keys {', '.join(map(repr, value))}" if isinstance(value, dict) else \
        f"a {type(value).__name__}, not a dict"
    raise UserError(f"metrics: {name} reads the step's {what} {key!r}, but the step's {what} "
                    f"has {has}")


class EpochMetrics:
    """`loss`, the step's loss parts and the metrics of one epoch (or one evaluation)."""

    def __init__(self, metric_fns: Sequence[Callable], device: torch.device | str = "cpu",
                 parts: Sequence[str] | None = None):
        """`parts`: the names of the step's loss parts (None: not known yet, taken as they
        come). Under torchrun every process must know every key before its first batch (a
        process may have none), so a step must return the same parts every time: `update`
        refuses others."""
        self.parts = list(parts) if parts is not None else None
        self.device = device
        self.names = [callable_name(fn) for fn in metric_fns]
        # the output and target keys each metric reads (its block's); None: the whole values
        self.reads = {}
        for name, fn in zip(self.names, metric_fns):
            keys = getattr(fn, "reads", (None, None))
            self.reads[name] = keys if any(keys) else None
        self.functions = [(name, fn) for name, fn in zip(self.names, metric_fns)
                          if not is_stateful(fn)]
        # a copy of each: training, validation and test keep states of their own
        self.stateful = {name: fn.clone().to(device) for name, fn in zip(self.names, metric_fns)
                         if is_stateful(fn)}
        for metric in self.stateful.values():
            metric.persistent(True)  # its state goes into state_dict(): mid-epoch checkpoints
        self.means = MetricTracker("loss", *(parts or ()), *(name for name, _ in self.functions))
        self.reset()

    @property
    def needs_output(self) -> bool:
        return bool(self.names)

    def reset(self) -> None:
        self.means.reset()
        for metric in self.stateful.values():
            metric.reset()

    @torch.no_grad()
    def update(self, step: StepOutput, n: int) -> None:
        """Add one batch of `n` samples: its loss and parts, and the metrics of its output and
        target. No host sync."""
        if self.parts is not None and list(step.parts) != self.parts:
            raise UserError(f"the step returned the loss parts {list(step.parts)}, its first "
                            f"batch {self.parts}; a step must return the same parts every time "
                            f"(log a part that does not apply as 0)")
        self.means.update("loss", step.loss, n)
        for name, value in step.parts.items():
            self.means.update(name, value, n)
        whole = (step.output, step.target)
        for name, fn in self.functions:
            keys = self.reads[name]
            self.means.update(name, fn(*(whole if keys is None else read_by(keys, name, step))),
                              n)
        for name, metric in self.stateful.items():
            keys = self.reads[name]
            metric.update(*(whole if keys is None else read_by(keys, name, step)))

    def all_reduce(self) -> None:
        """torchrun: the means over every process (the stateful metrics synchronise when
        computed)."""
        self.means.all_reduce()

    def result(self) -> dict[str, float]:
        """`loss`, the parts, then the metrics in the config's order; read back once."""
        means = self.means.result()
        computed = {}
        for name, metric in self.stateful.items():
            with warnings.catch_warnings():  # an empty share of the data under torchrun
                warnings.filterwarnings("ignore", message=".*compute.*before.*update")
                computed[name] = float(metric.compute())
        values = {key: value for key, value in means.items() if key not in self.names}
        values.update({name: means[name] if name in means else computed[name]
                       for name in self.names if name in means or name in computed})
        return values

    def state_dict(self) -> dict:
        """The running sums and the metrics' states of every process (under torchrun all of
        them take part), as plain data."""
        totals = MetricTracker()
        totals.load_state_dict(self.means.state_dict(), self.device)
        totals.all_reduce()
        states = {}
        for name, metric in self.stateful.items():
            with metric.sync_context(should_unsync=True):
                states[name] = dict(metric.state_dict())  # detached copies
        return {**totals.state_dict(), "metrics": states}

    def load_state_dict(self, state: dict, device: torch.device | str, main: bool = True) -> None:
        """Continue from `state_dict()`; only the `main` process carries the sums on (the
        others start at zero, so each sample is counted once)."""
        self.reset()
        if not main:
            return
        self.means.load_state_dict(state, device)
        for name, metric in self.stateful.items():
            saved = (state.get("metrics") or {}).get(name)
            if saved:
                metric.load_state_dict(map_tensors(saved, lambda tensor: tensor.to(device)))


class MetricTracker:
    """Sample-weighted running means, accumulated on the device.

    `update` never synchronises with the device: sums stay tensors and counts are host
    integers, so the values are read back once, in `result()`. A key not given to the
    constructor is added by its first `update` (under torchrun every process must add keys in
    the same order: they are reduced in it).
    """

    def __init__(self, *keys: str):
        self._keys = list(keys)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {key: 0.0 for key in self._keys}
        self._counts: dict[str, int] = {key: 0 for key in self._keys}

    def update(self, key: str, value: torch.Tensor | float, n: int = 1) -> None:
        """Add `value`, the mean over `n` samples, to the running mean of `key`."""
        if key not in self._sums:
            self._keys.append(key)
            self._sums[key], self._counts[key] = 0.0, 0
        total = self._sums[key]
        if isinstance(value, torch.Tensor) and isinstance(total, torch.Tensor):
            total.add_(value.detach(), alpha=n)  # one in-place op: no allocation per batch
        elif isinstance(value, torch.Tensor):
            # float64 sums keep long epochs exact; MPS has no float64
            dtype = torch.float32 if value.device.type == "mps" else torch.float64
            self._sums[key] = value.detach().to(dtype) * n + total
        else:
            self._sums[key] = total + value * n
        self._counts[key] += n

    def count(self, key: str) -> int:
        return self._counts[key]

    def state_dict(self) -> dict:
        """The running sums and counts, as plain data (a checkpoint taken mid-epoch holds them)."""
        sums = {key: total.clone() if isinstance(total, torch.Tensor) else total
                for key, total in self._sums.items()}  # the tracker goes on adding in place
        return {"sums": sums, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        """Continue from `state_dict()`'s sums and counts, the sums moved to `device`."""
        self._keys = list(dict.fromkeys([*self._keys, *state["sums"]]))
        self.reset()
        for key in self._keys:
            total = state["sums"].get(key, 0.0)
            self._sums[key] = total.to(device) if isinstance(total, torch.Tensor) else total
            self._counts[key] = int(state["counts"].get(key, 0))

    def avg(self, key: str) -> float:
        return self.result()[key]

    def result(self) -> dict[str, float]:
        """The mean of every key that has been updated, read back from the device once."""
        keys = [key for key in self._keys if self._counts[key] > 0]
        return {key: total / self._counts[key] for key, total in zip(keys, self._host_sums(keys))}

    def all_reduce(self) -> None:
        """Make every process's tracker hold the sums and counts of all of them (under
        torchrun), so that the means are over every sample any process saw — each counted
        once. Alone, it changes nothing."""
        if not distributed.active():
            return
        keys = self._keys
        totals = distributed.sum_counts([*self._host_sums(keys), *map(self._counts.get, keys)])
        self._sums = dict(zip(keys, totals[:len(keys)]))
        self._counts = {key: int(count) for key, count in zip(keys, totals[len(keys):])}

    def _host_sums(self, keys: list[str]) -> list[float]:
        """The sums of `keys` as Python floats: one host-device transfer for all of them."""
        sums = [self._sums[key] for key in keys]
        tensors = [s for s in sums if isinstance(s, torch.Tensor)]
        if tensors:
            values = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist())
            sums = [next(values) if isinstance(s, torch.Tensor) else s for s in sums]
        return sums
