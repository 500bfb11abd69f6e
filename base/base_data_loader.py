"""A DataLoader with a seeded validation split and an epoch-determined shuffle order."""
import itertools
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torch.utils.data.dataloader import default_collate

from utils import distributed
from utils.errors import ConfigError
from utils.interrupts import WorkerInit
from utils.seeding import derive_seed


class EpochSampler(Sampler[int]):
    """Yields `indices`, shuffled by a permutation that depends only on (seed, epoch, pass).

    `set_epoch(e)` makes the order of epoch e reproducible whatever ran before it in this
    process, which is what exact resume needs. Each further pass over the sampler within one
    epoch (iteration-based training) draws a new permutation. `set_position(e, p, skip)` starts
    the next pass as pass p of epoch e, without its first `skip` indices: a run resumed
    mid-epoch continues the same order without replaying the data it has seen.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool, seed: int):
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.pass_index = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0, 0)

    def set_position(self, epoch: int, pass_index: int, skip: int) -> None:
        self.epoch, self.pass_index, self.skip = epoch, pass_index, skip

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            seed = derive_seed(self.seed, self.epoch, self.pass_index)
            order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))]
        order = order[self.skip:]
        self.pass_index += 1
        self.skip = 0
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.indices) - self.skip


class SeededBatch(list):
    """The indices of one batch, and the seed of that batch's random transforms.

    A DataLoader worker fetches a batch by iterating its indices; iterating a `SeededBatch`
    inside a worker first seeds the worker's Python, NumPy and torch generators from
    `seed_key`.
    Random augmentation then gives the same batch whichever worker loads it, however many
    workers there are, and after a resume mid-epoch. In the main process (`num_workers` 0)
    nothing is reseeded: there the global generators run on and are saved in checkpoints.
    """

    seed_key: tuple[int, ...] = ()  # the seed is derive_seed(*seed_key), computed in the worker

    def __iter__(self):
        if self.seed_key and get_worker_info() is not None:
            seed = derive_seed(*self.seed_key)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.default_generator.manual_seed(seed)  # torch.manual_seed costs ~90 us more
        return super().__iter__()


class SeededBatchSampler(Sampler[list[int]]):
    """`BatchSampler` over an `EpochSampler` whose batches are `SeededBatch`es, seeded from
    (seed, epoch, pass, batch number); with `per_pass` False from (seed, batch number) only, so
    that every validation sees the same transforms.

    With several processes (`world_size` > 1) each batch of the single-process run is cut
    into `world_size` pieces: the sampler takes `batch_size * world_size` indices of the shared
    permutation (a global batch) and yields piece `rank` of it. Two processes with batch B then
    see exactly the samples one process with batch 2B sees, step by step. A short last global
    batch is split as evenly as it goes (sizes differ by at most one). With `even` (training)
    every process yields the same number of batches — each of them takes part in every step —
    so a last global batch with fewer samples than processes is left out; without it
    (validation) every sample is yielded once, and a process may get one batch fewer.
    """

    def __init__(self, sampler: "EpochSampler", batch_size: int, drop_last: bool, seed: int,
                 per_pass: bool = True, rank: int = 0, world_size: int = 1, even: bool = True):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.seed, self.per_pass = seed, per_pass
        self.rank, self.world_size, self.even = rank, world_size, even
        self.global_batch = batch_size * world_size

    def __iter__(self):
        sampler = self.sampler
        stream = (sampler.epoch, sampler.pass_index) if self.per_pass else (-1, 0)
        process = (self.rank,) if self.world_size > 1 else ()  # augmentation differs per piece
        number = sampler.skip // self.global_batch  # batches of this pass done before a resume
        indices = iter(sampler)
        while chunk := list(itertools.islice(indices, self.global_batch)):
            if len(chunk) < self.global_batch and (self.drop_last or
                                                   self.even and len(chunk) < self.world_size):
                return
            batch = SeededBatch(self._piece(chunk))
            if batch:
                batch.seed_key = (self.seed, *stream, number, *process)
                yield batch
            number += 1

    def _piece(self, chunk: list[int]) -> list[int]:
        """This process's contiguous share of a global batch."""
        if self.world_size == 1:
            return chunk
        base, extra = divmod(len(chunk), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return chunk[start:start + base + (self.rank < extra)]

    def __len__(self) -> int:
        return self.batch_count(len(self.sampler))

    def batch_count(self, n_samples: int) -> int:
        """How many batches this process yields from `n_samples` indices."""
        count, tail = divmod(n_samples, self.global_batch)
        if tail and not self.drop_last and (tail >= self.world_size or
                                            not self.even and self.rank < tail):
            count += 1
        return count


class SeededDataLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose batches carry seeds (`SeededBatch`).

    It keeps DataLoader's public attributes (`sampler`, `batch_size`, `drop_last`) and hands its
    iterators the seeded batches through `_index_sampler`, the property they read batches from.
    With `world_size` > 1 it loads process `rank`'s share of each global batch
    (`SeededBatchSampler`); `batch_size` is then per process.
    """

    def __init__(self, *args, batch_seed: int, per_pass: bool = True, rank: int = 0,
                 world_size: int = 1, even: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._seeded_batches = SeededBatchSampler(self.sampler, self.batch_size, self.drop_last,
                                                  batch_seed, per_pass, rank, world_size, even)

    @property
    def _index_sampler(self):
        return self._seeded_batches


def validation_split_problem(validation_split: Any, n_samples: int | None = None) -> str | None:
    """What is wrong with a `validation_split` (a fraction in [0, 1) or a sample count smaller
    than the data set), or None; `n_samples` None checks what can be checked without the data.
    The message follows `data_loader.args.validation_split: `."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        return (f"expected a fraction in [0, 1) or a sample count, "
                f"got {json.dumps(validation_split)}")
    if isinstance(validation_split, int):
        if validation_split < 0 or (n_samples is not None and validation_split >= n_samples):
            upper = n_samples if n_samples is not None else "the data set size"
            size = f" (the data set has {n_samples} samples)" if n_samples is not None else ""
            return f"expected a sample count in [0, {upper}){size}, got {validation_split}"
    elif not 0.0 <= validation_split < 1.0:
        return f"expected a fraction in [0, 1), got {validation_split}"
    if n_samples is not None and n_samples - _n_valid(n_samples, validation_split) < 1:
        return f"{validation_split} leaves no training data (the data set has {n_samples} samples)"
    return None


def _n_valid(n_samples: int, validation_split: float | int) -> int:
    if isinstance(validation_split, int):
        return validation_split
    return int(n_samples * validation_split)


def split_indices(n_samples: int, validation_split: float | int,
                  seed: int) -> tuple[list[int], list[int]]:
    """Training and validation indices, a seeded random split of `range(n_samples)`.

    `validation_split` is a fraction in [0, 1) or a sample count smaller than `n_samples`.
    Raises a `ConfigError` for anything out of range or leaving no training data.
    """
    problem = validation_split_problem(validation_split, n_samples)
    if problem:
        raise ConfigError(f"data_loader.args.validation_split: {problem}")
    n_valid = _n_valid(n_samples, validation_split)
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x5011))  # split, not shuffle
    permutation = torch.randperm(n_samples, generator=generator).tolist()
    return sorted(permutation[n_valid:]), sorted(permutation[:n_valid])


class BaseDataLoader(SeededDataLoader):
    """A DataLoader over `dataset` minus a validation part that `split_validation()` returns.

    Randomness comes from generators of its own, seeded from `seed`: building or iterating it
    never touches the global RNG. Call `set_epoch(e)` before each epoch (the trainer does) so the
    shuffle order and worker seeds of epoch e depend only on (seed, e).

    Under `torchrun` it is the distributed sampler as well: every process shuffles the same
    permutation and loads its own share of each global batch of `batch_size * world_size`
    (training) and of the validation data (each sample once, on one process).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool,
                 validation_split: float | int, num_workers: int,
                 collate_fn: Callable = default_collate, seed: int = 0, **loader_kwargs):
        self.validation_split = validation_split
        self.shuffle = shuffle
        self.seed = seed
        train_indices, valid_indices = split_indices(len(dataset), validation_split, seed)
        self.n_samples = len(train_indices)
        self._processes = {"rank": distributed.rank(), "world_size": distributed.world_size()}
        self._valid_sampler = EpochSampler(valid_indices, shuffle=False, seed=seed) \
            if valid_indices else None
        loader_kwargs["worker_init_fn"] = WorkerInit(loader_kwargs.get("worker_init_fn"))
        # async copies to the GPU; persistent_workers stays off unless asked for: on the CPU
        # it measured 1.4x slower per epoch (bench/data_loading.py, README's Performance)
        loader_kwargs.setdefault("pin_memory", torch.cuda.is_available())
        self._init_kwargs = {"dataset": dataset, "batch_size": batch_size,
                             "collate_fn": collate_fn, "num_workers": num_workers, **loader_kwargs}
        # the generator only seeds workers here (the sampler shuffles); keeps the global RNG out
        super().__init__(sampler=EpochSampler(train_indices, shuffle, seed),
                         generator=torch.Generator().manual_seed(derive_seed(seed)),
                         batch_seed=derive_seed(seed, 0xBA7C), **self._processes,
                         **self._init_kwargs)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration epoch `epoch`'s, starting after its first `start_batch`
        batches (a run resumed mid-epoch): the same batches, in the same order, with the same
        worker seeds as in a run that was never interrupted."""
        batches_per_pass = max(1, self._seeded_batches.batch_count(len(self.sampler.indices)))
        pass_index, batch_in_pass = divmod(start_batch, batches_per_pass)
        self.sampler.set_position(epoch, pass_index,
                                  batch_in_pass * self._seeded_batches.global_batch)

    def __iter__(self):
        # worker seeds (torch's base seed + worker id) depend only on (seed, epoch, pass)
        sampler = self.sampler
        self.generator.manual_seed(derive_seed(self.seed, sampler.epoch, sampler.pass_index))
        return super().__iter__()

    def split_validation(self) -> DataLoader | None:
        """A loader over the validation part, in a fixed order; None when there is none."""
        if self._valid_sampler is None:
            return None
        return SeededDataLoader(sampler=self._valid_sampler,
                                generator=torch.Generator().manual_seed(derive_seed(self.seed, -1)),
                                batch_seed=derive_seed(self.seed, 0xBA7C, -1), per_pass=False,
                                even=False, **self._processes, **self._init_kwargs)


def release_workers(*loaders: DataLoader | None) -> None:
    """Stop the persistent worker processes of `loaders` now.

    With `persistent_workers` a DataLoader keeps its workers (in its `_iterator`) until it is
    garbage-collected; left to then — a loader referenced by a traceback, a test, a notebook —
    shutting them down can take seconds per worker. The trainer calls this when training ends.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None
