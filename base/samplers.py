"""The samplers behind `BaseDataLoader`: an epoch's seeded permutation (`EpochSampler`), and
its batches, each carrying the seed of its random transforms and cut into each process's
share under torchrun (`SeededBatchSampler`)."""
import itertools
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info

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
        self.seed_worker()
        return super().__iter__()

    def seed_worker(self) -> None:
        """In a worker, seed its generators for this batch (iterating the batch does it; a data
        set's `__getitems__` that does not iterate calls it)."""
        if self.seed_key and get_worker_info() is not None:
            seed = derive_seed(*self.seed_key)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            # the CPU generator alone: torch.manual_seed also seeds every accelerator's, for
            # nothing in a worker, and costs more
            torch.default_generator.manual_seed(seed)


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
