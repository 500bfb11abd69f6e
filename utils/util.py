"""Small helpers shared by every layer: metric accumulation, data loops, devices (file I/O is
in `utils.files`, re-exported here)."""
import logging
from collections.abc import Iterable, Iterator
from itertools import repeat

import torch

from utils import distributed
from utils.files import atomic_link, atomic_write, read_json, write_json

__all__ = ["MetricTracker", "inf_loop", "prepare_device", "read_json", "write_json", "atomic_write",
           "atomic_link"]


def inf_loop(data_loader: Iterable) -> Iterator:
    """Yield from `data_loader` forever, restarting it each time it is exhausted."""
    for loader in repeat(data_loader):
        yield from loader


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


def prepare_device(n_gpu_use: int) -> tuple[torch.device, list[int]]:
    """Pick the device: CUDA when asked for and present, else the CPU, with a warning on a shortfall."""
    logger = logging.getLogger("utils")
    n_gpu = torch.cuda.device_count()
    if n_gpu_use > 0 and n_gpu == 0:
        logger.warning("Warning: n_gpu is %d but no CUDA GPU is available; running on the CPU.",
                       n_gpu_use)
        n_gpu_use = 0
    if n_gpu_use > n_gpu:
        logger.warning("Warning: n_gpu is %d but only %d GPUs are available; using %d.",
                       n_gpu_use, n_gpu, n_gpu)
        n_gpu_use = n_gpu
    device = torch.device("cuda:0" if n_gpu_use > 0 else "cpu")
    return device, list(range(n_gpu_use))
