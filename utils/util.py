"""Small helpers shared by every layer: JSON and atomic file I/O, metric accumulation, devices."""
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path
from typing import IO, Any, Callable

import torch

from utils import distributed
from utils.errors import ConfigError, UserError

_JSON_HINTS = (
    ("Expecting property name enclosed in double quotes",
     " (JSON allows no trailing commas, single quotes or // comments)"),
    ("Expecting value", " (JSON allows no // comments, trailing commas or single quotes)"),
)


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file; a missing file or a syntax error is a `UserError` naming file, line, column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({error.__class__.__name__})") from None
    duplicates = []
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, duplicates),
                          parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        hint = next((h for key, h in _JSON_HINTS if error.msg.startswith(key)), "")
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}{hint}") from None
    except _NonFinite as error:
        offset = max(text.find(str(error)), 0)
        line = text.count("\n", 0, offset) + 1
        column = offset - text.rfind("\n", 0, offset)
        raise ConfigError(f"{path}:{line}:{column}: invalid JSON: {error} is not a number JSON "
                          f"allows; use a finite number") from None
    if duplicates:
        raise ConfigError("\n".join(f"{path}: key {key!r} appears twice in one object (JSON "
                                    f"keeps only the last); remove one" for key in duplicates))
    return data


class _NonFinite(ValueError):
    """NaN or Infinity in a JSON file: Python's reader takes them, a config may not."""


def _refuse_constant(name: str):
    raise _NonFinite(name)


def _object(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict:
    """A JSON object; a key given twice is added to `duplicates`."""
    result = {}
    for key, value in pairs:
        if key in result and key not in duplicates:
            duplicates.append(key)
        result[key] = value
    return result


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that a crash at any instant leaves either the old file or the new one.

    `write` gets a binary file object in the same folder; it is flushed, fsynced and moved into
    place with `os.replace`, then the folder is fsynced so the rename itself is durable.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file follows the umask
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make `path` a hard link to the complete file `source`, atomically (a link under a temp
    name, then `os.replace`); False where the file system has no hard links."""
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    try:
        tmp_name.unlink(missing_ok=True)
        os.link(source, tmp_name)
    except OSError:
        return False
    os.replace(tmp_name, path)
    _fsync_dir(path.parent)
    return True


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system supports fsync on a folder (why: durability only, not atomicity)
    finally:
        os.close(fd)


def write_json(content: dict, path: str | os.PathLike) -> None:
    """Write `content` as indented JSON, atomically."""
    data = (json.dumps(content, indent=4, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda file: file.write(data))


def inf_loop(data_loader: Iterable) -> Iterator:
    """Yield from `data_loader` forever, restarting it each time it is exhausted."""
    for loader in repeat(data_loader):
        yield from loader


class MetricTracker:
    """Sample-weighted running means, accumulated on the device.

    `update` never synchronises with the device: sums stay tensors and counts are host
    integers, so the values are read back once, in `result()`.
    """

    def __init__(self, *keys: str):
        self._keys = list(keys)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {key: 0.0 for key in self._keys}
        self._counts: dict[str, int] = {key: 0 for key in self._keys}

    def update(self, key: str, value: torch.Tensor | float, n: int = 1) -> None:
        """Add `value`, the mean over `n` samples, to the running mean of `key`."""
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
