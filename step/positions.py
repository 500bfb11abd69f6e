"""Where a run stopped inside an epoch, and whether a resumed run can continue from there:
the same batches need the same global batch size, pass length, epoch length and accumulation."""
import itertools
from collections.abc import Iterable, Iterator

from base.base_data_loader import BaseDataLoader, batch_size_of
from utils import distributed
from utils.errors import CheckpointError, ConfigError


def position(batch_size: int, world_size: int, batches_per_pass: int, len_epoch: int,
             grad_accum_steps: int) -> dict:
    """What a mid-epoch position means, saved with it (plain data)."""
    return {"batch_size": batch_size, "world_size": world_size,
            "batches_per_pass": batches_per_pass, "len_epoch": len_epoch,
            "grad_accum_steps": grad_accum_steps}


def check_position(saved: dict, now: dict) -> None:
    """Raise a `ConfigError` naming the config key when a position saved as `saved` does not
    mean the same batches in a run described by `now` (both from `position`; an older
    checkpoint may lack keys: they are taken as unchanged)."""
    saved = {key: saved.get(key, value) for key, value in now.items()}
    before = (saved["batch_size"], saved["world_size"])
    after = (now["batch_size"], now["world_size"])
    if before[0] * before[1] != after[0] * after[1]:
        raise ConfigError(
            f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
            f"{_batch_text(*before)}; resuming with {_batch_text(*after)} would not continue the "
            f"same epoch. Keep {before[0] * before[1]} samples per step{_bs_hint(before, after)}, "
            f"or resume from an epoch checkpoint")
    if saved["batches_per_pass"] != now["batches_per_pass"]:  # only a left-out batch differs
        raise ConfigError(
            f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
            f"{saved['batches_per_pass']} batches per pass over the data, this run makes "
            f"{now['batches_per_pass']} (with several processes a last global batch of fewer "
            f"samples than processes is left out); resume from an epoch checkpoint, or with as "
            f"many processes")
    for key, path in (("len_epoch", "trainer.len_epoch"),
                      ("grad_accum_steps", "trainer.grad_accum_steps")):
        if saved[key] != now[key]:
            raise ConfigError(f"{path}: the checkpoint stopped mid-epoch with {key} "
                              f"{saved[key]}; resuming with {now[key]} would not continue the "
                              f"same epoch. Keep {saved[key]}, or resume from an epoch "
                              f"checkpoint")


def _bs_hint(saved: tuple[int, int], now: tuple[int, int]) -> str:
    """` (--bs 32 with 2 processes)`: the per-process batch size that keeps the global one."""
    total, processes = saved[0] * saved[1], now[1]
    return f" (--bs {total // processes} with {processes} process" \
           f"{'es' if processes > 1 else ''})" if total % processes == 0 else ""


def _batch_text(batch_size: int, processes: int) -> str:
    """`batch_size 64`, or `batch_size 32 x 2 processes`."""
    return f"batch_size {batch_size}" + (f" x {processes} processes" if processes > 1 else "")


class EpochBatches:
    """Which batches an epoch (or its rest, after a resume mid-epoch) reads from `data_loader`,
    grouped into optimizer steps of `accum` micro-batches: `len_epoch` steps cycling through
    the data when `iteration_based`, else one pass; and what a mid-epoch position means."""

    def __init__(self, data_loader, len_epoch: int, accum: int, iteration_based: bool, logger):
        self.data_loader = data_loader
        self.len_epoch = len_epoch
        self.accum = accum
        self.iteration_based = iteration_based
        self.logger = logger

    def position(self) -> dict:
        """What a mid-epoch position means in this run (saved with it)."""
        return position(batch_size_of(self.data_loader), distributed.world_size(),
                        len(self.data_loader), self.len_epoch, self.accum)

    def check_resumable(self, saved: dict, start_step: int) -> None:
        """Raise a `ConfigError` when a position saved as `saved` does not mean the same
        batches here, a `CheckpointError` when `start_step` is past the end of an epoch."""
        check_position(saved, self.position())
        if start_step > self.len_epoch:  # == len_epoch: stopped during validation
            raise CheckpointError(f"its epoch_step {start_step} is past the end of an "
                                  f"epoch of {self.len_epoch} steps")

    def step_groups(self, epoch: int, start: int) -> Iterator[list]:
        """Lists of `accum` micro-batches, one per optimizer step, from step `start` of `epoch`
        on; a pass's last list may be shorter."""
        batches = self._epoch_batches(epoch, start * self.accum, (self.len_epoch - start) *
                                      self.accum if self.iteration_based else None)
        while group := list(itertools.islice(batches, self.accum)):
            yield group

    def _epoch_batches(self, epoch: int, start: int = 0, count: int | None = None) -> Iterator:
        """The (micro-)batches of `epoch` after its first `start`, in an order that depends only
        on the seed and `epoch` — `count` of them cycling through the data (iteration-based), or
        the rest of one pass; the skipped ones are skipped by the sampler, not loaded."""
        loader = self.data_loader
        if count is not None and count <= 0 or count is None and start >= len(loader):
            return iter(())
        skip = 0
        if isinstance(loader, BaseDataLoader):
            loader.set_epoch(epoch, start)
        else:
            set_epoch = getattr(loader, "set_epoch", None) or \
                getattr(getattr(loader, "sampler", None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
            skip = start  # a loader of another kind can only be read past the seen batches
            if skip:
                self.logger.warning("%s cannot start mid-epoch: reading past %d batches.",
                                    type(loader).__name__, skip)
        if count is not None:
            return itertools.islice(inf_loop(loader), skip, skip + count)
        return itertools.islice(iter(loader), skip, None)


def inf_loop(data_loader: Iterable) -> Iterator:
    """Yield from `data_loader` forever, restarting it each time it is exhausted."""
    for loader in itertools.repeat(data_loader):
        yield from loader
