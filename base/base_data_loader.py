"""A DataLoader with a seeded validation split and an epoch-determined shuffle order."""
import json
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from base.folds import class_labels, fold_indices, fold_problem, is_fold
from base.in_memory import CollateWholeBatches, batched, gather, on_device_problem, placed
from base.samplers import EpochSampler, SeededBatchSampler
from utils import distributed
from utils.errors import ConfigError, UserError
from utils.interrupts import WorkerInit
from utils.seeding import derive_seed


class SeededDataLoader(DataLoader):
    """A DataLoader whose batches come from a `SeededBatchSampler` over an `EpochSampler`, its
    public `batch_sampler`: batches carry seeds (`SeededBatch`), and with `world_size` > 1 it
    loads process `rank`'s share of each global batch (`batch_size` is then per process).

    As for any DataLoader built from a batch sampler, DataLoader's own `batch_size` is None and
    its `sampler` a placeholder: `epoch_sampler` and `batch_sampler.batch_size` say what they
    would (`batch_size_of` / `sample_count` read any DataLoader).
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, batch_size: int, *,
                 batch_seed: int, drop_last: bool = False, per_pass: bool = True, rank: int = 0,
                 world_size: int = 1, even: bool = True, on_device: bool = False, **kwargs):
        batches = SeededBatchSampler(sampler, batch_size, drop_last, batch_seed, per_pass, rank,
                                     world_size, even)
        super().__init__(dataset, batch_sampler=batches, **kwargs)
        self.on_device = on_device
        self._placed: list[torch.Tensor] | None = None  # with on_device: the tensors, placed

    @property
    def epoch_sampler(self) -> EpochSampler:
        """The sampler whose permutation the batches are cut from (its position: `set_epoch`)."""
        return self.batch_sampler.sampler

    def place(self, device: torch.device) -> None:
        """With `on_device`: move the data set's tensors to `device` once (the builder calls it
        with the training device); the batches are sliced there from then on."""
        if self.on_device:  # the validation loader shares the data set: moved once
            self._placed = placed(self.dataset, device)

    def __iter__(self):
        if self._placed is None:
            return super().__iter__()
        return self._sliced_batches()

    def _sliced_batches(self):
        """The batches of `batch_sampler`, in its order, sliced from the placed tensors."""
        transform = getattr(self.dataset, "batch_transform", None)
        device = self._placed[0].device
        for indices in self.batch_sampler:
            yield gather(self._placed, torch.tensor(indices, dtype=torch.long, device=device),
                         transform)


def batch_size_of(loader: DataLoader) -> int | None:
    """The (per-process) batch size of any DataLoader, also one built from a batch sampler."""
    if loader.batch_size is not None:
        return loader.batch_size
    return getattr(loader.batch_sampler, "batch_size", None)


def sample_count(loader: DataLoader) -> int:
    """How many samples one pass over `loader` draws from (this process's share aside)."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    return len(sampler if sampler is not None else loader.sampler)


# Data loader arguments every `BaseDataLoader` takes, with their smallest allowed value.
_LOADER_MINIMUMS = {"batch_size": 1, "num_workers": 0}


def loader_args_problems(args: dict) -> list[str]:
    """The ranges of the arguments every `BaseDataLoader` takes, in a config's
    `data_loader.args` (the data set size is checked when the data is loaded)."""
    problems = []
    for key, smallest in _LOADER_MINIMUMS.items():
        value = args.get(key, smallest)
        if isinstance(value, int) and not isinstance(value, bool) and value < smallest:
            problems.append(f"data_loader.args.{key}: expected an integer >= {smallest}, "
                            f"got {json.dumps(value)}")
    split_problem = validation_split_problem(args.get("validation_split", 0.0))
    if split_problem:
        problems.append(f"data_loader.args.validation_split: {split_problem}")
    return problems


def validation_split_problem(validation_split: Any, n_samples: int | None = None) -> str | None:
    """What is wrong with a `validation_split` (a fraction in [0, 1) or a sample count smaller
    than the data set), or None; `n_samples` None checks what can be checked without the data.
    The message follows `data_loader.args.validation_split: `. A `{"fold": k, "folds": K}`
    holds out fold k of K (base/folds.py)."""
    if is_fold(validation_split):
        return fold_problem(validation_split, n_samples)
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        return ('expected a fraction in [0, 1), a sample count or {"fold": k, "folds": K}, '
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
    if n_samples is not None and validation_split > 0 and _n_valid(n_samples, validation_split) < 1:
        return (f"{validation_split} of {n_samples} sample{'s' if n_samples != 1 else ''} is no "
                f"validation sample at all; give a sample count (e.g. 1) or a larger fraction, "
                f"or 0 for no validation")
    return None


def _n_valid(n_samples: int, validation_split: float | int) -> int:
    if isinstance(validation_split, int):
        return validation_split
    return int(n_samples * validation_split)


def split_indices(n_samples: int, validation_split: float | int | dict, seed: int,
                  labels: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """Training and validation indices, a seeded random split of `range(n_samples)`.

    `validation_split` is a fraction in [0, 1), a sample count smaller than `n_samples`, or
    `{"fold": k, "folds": K}`: fold k of K, stratified by class `labels` when given.
    Raises a `ConfigError` for anything out of range or leaving no training data.
    """
    problem = validation_split_problem(validation_split, n_samples)
    if problem:
        raise ConfigError(f"data_loader.args.validation_split: {problem}")
    if is_fold(validation_split):
        return fold_indices(n_samples, validation_split, seed, labels)
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
                 validation_split: float | int | dict, num_workers: int,
                 collate_fn: Callable = default_collate, seed: int = 0, on_device: bool = False,
                 **loader_kwargs):
        self.validation_split = validation_split
        self.shuffle = shuffle
        self.seed = seed
        collate_fn = collate_fn or default_collate  # None: DataLoader's default, as in torch
        if len(dataset) == 0:  # not validation_split's fault
            raise UserError(f"data_loader: the data set ({type(dataset).__name__}) has no "
                            f"samples; check data_loader.args (data_dir, and which split "
                            f"`training` selects: false is the test split)")
        problem = on_device_problem(dataset, collate_fn) if on_device else None
        if problem:
            raise UserError(f"data_loader.args.on_device: {problem}")
        labels = class_labels(dataset) if is_fold(validation_split) else None
        train_indices, valid_indices = split_indices(len(dataset), validation_split, seed, labels)
        self.n_samples = len(train_indices)
        self._processes = {"rank": distributed.rank(), "world_size": distributed.world_size()}
        self._valid_sampler = EpochSampler(valid_indices, shuffle=False, seed=seed) \
            if valid_indices else None
        loader_kwargs["worker_init_fn"] = WorkerInit(loader_kwargs.get("worker_init_fn"))
        # async copies to the GPU; persistent_workers stays off unless asked for: on the CPU
        # it measured slower per epoch (bench/data_loading.py, docs/performance.md)
        loader_kwargs.setdefault("pin_memory", torch.cuda.is_available())
        # in-memory tensors: a whole batch per fetch (base/in_memory.py)
        self._init_kwargs = {"dataset": batched(dataset), "batch_size": batch_size,
                             "collate_fn": CollateWholeBatches(collate_fn),
                             "num_workers": num_workers, "on_device": on_device,
                             **loader_kwargs}
        # the generator only seeds workers here (the sampler shuffles); keeps the global RNG out
        super().__init__(sampler=EpochSampler(train_indices, shuffle, seed),
                         generator=torch.Generator().manual_seed(derive_seed(seed)),
                         batch_seed=derive_seed(seed, 0xBA7C), **self._processes,
                         **self._init_kwargs)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration epoch `epoch`'s, starting after its first `start_batch`
        batches (a run resumed mid-epoch): the same batches, in the same order, with the same
        worker seeds as in a run that was never interrupted."""
        batches = self.batch_sampler
        batches_per_pass = max(1, batches.batch_count(len(self.epoch_sampler.indices)))
        pass_index, batch_in_pass = divmod(start_batch, batches_per_pass)
        self.epoch_sampler.set_position(epoch, pass_index, batch_in_pass * batches.global_batch)

    def __iter__(self):
        # worker seeds (torch's base seed + worker id) depend only on (seed, epoch, pass)
        sampler = self.epoch_sampler
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


def download_once(build: Callable[[bool], Dataset], download: bool, name: str) -> Dataset:
    """`build(download)` a data set that may download its files; under torchrun rank 0 builds
    (and downloads) first while the others wait, then they build from its files."""
    with distributed.all_or_none(f"getting {name}"):
        if distributed.is_main():
            dataset = build(download)
    return dataset if distributed.is_main() else build(False)


def release_workers(*loaders: DataLoader | None) -> None:
    """Stop the persistent worker processes of `loaders` now.

    With `persistent_workers` a DataLoader keeps its workers (in its `_iterator`) until it is
    garbage-collected; left to then — a loader referenced by a traceback, a test, a notebook —
    shutting them down can take seconds per worker. The trainer calls this when training ends.

    DataLoader has no public way to stop persistent workers: this function is the one place
    that uses its private `_iterator._shutdown_workers()`;
    tests/test_base_data_loader.py::test_release_workers_stops_persistent_workers_at_once fails
    loudly when a torch release renames them.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None
