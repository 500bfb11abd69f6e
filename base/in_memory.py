"""Data held in memory as tensors, fetched a whole batch at a time.

torch's `DataLoader` asks a data set that has `__getitems__(indices)` for a whole batch at once
(in the main process and in workers) instead of calling `__getitem__` once per sample and
stacking the samples in `collate_fn`. For tensors in memory one indexed gather
(`images[indices]`) does the same in a fraction of the time. `BaseDataLoader` fetches this way:

- a `TensorDataset` (torch's own `__getitem__`) becomes an `InMemoryDataset`, the same tensors;
- a data set of your own opts in by defining `__getitems__(indices)`: return a list of samples
  (torch's contract; `collate_fn` then makes the batch) or `WholeBatch(batch)`, the batch as the
  model gets it (`collate_fn` is skipped when it is torch's `default_collate`). Iterate `indices`
  (a comprehension does) before drawing random numbers: in a worker that seeds the generators
  for this batch (`base.samplers.SeededBatch`), so augmentation stays reproducible.

The batches, their order and their seeds are those of the per-sample path, value for value.

`data_loader.args.on_device: true` goes further for a data set that fits in the accelerator's
memory: its tensors move there once, and each batch is sliced there (no DataLoader, no worker,
no host-to-device copy per step); on the CPU the batches are sliced from host memory.
"""
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import TensorDataset
from torch.utils.data.dataloader import default_collate

from base.samplers import SeededBatch
from utils.errors import UserError


class WholeBatch(list):
    """A batch a data set's `__getitems__` made itself: its tensors, in the structure
    `default_collate` would have given for tuple samples; the loader hands it on as it is."""

    def samples(self) -> list[tuple]:
        """The batch as the list of samples a `collate_fn` of the user's own expects."""
        return list(zip(*(tensor.unbind(0) for tensor in self), strict=True))


class InMemoryDataset(TensorDataset):
    """A `TensorDataset` that gives a whole batch with one gather per tensor, then
    `batch_transform(batch)` if given: a function of the batch's list of tensors (all of its
    samples at once, on the device with `on_device`) returning the list the model gets —
    augmentation of whole batches. `dataset[i]` is the untransformed sample."""

    def __init__(self, *tensors: torch.Tensor, batch_transform: Callable | None = None):
        super().__init__(*tensors)
        self.batch_transform = batch_transform

    def __getitems__(self, indices: Sequence[int]) -> WholeBatch:
        if isinstance(indices, SeededBatch):
            indices.seed_worker()  # as iterating it would: a transform draws random numbers
        return WholeBatch(gather(self.tensors, torch.tensor(indices, dtype=torch.long),
                                 self.batch_transform))


def gather(tensors: Sequence[torch.Tensor], index: torch.Tensor,
           transform: Callable | None = None) -> list[torch.Tensor]:
    """The batch `index` selects from `tensors`, transformed."""
    batch = [tensor.index_select(0, index) for tensor in tensors]
    return transform(batch) if transform is not None else batch


def batched(dataset):
    """`dataset`, fetched a batch at a time where that gives the same batches: a `TensorDataset`
    with torch's own `__getitem__` as an `InMemoryDataset` over the same tensors; any other data
    set as it is (one with `__getitems__` is already fetched so)."""
    if type(dataset) is TensorDataset:
        fetched = InMemoryDataset(*dataset.tensors)
        fetched.__dict__.update({key: value for key, value in vars(dataset).items()
                                 if key != "tensors"})  # `classes` and the like stay
        return fetched
    return dataset


class CollateWholeBatches:
    """The loader's `collate_fn`: a `WholeBatch` handed on as it is (under `default_collate`)
    or as samples to a `collate_fn` of the user's own; a list of samples collated as usual."""

    def __init__(self, collate_fn: Callable = default_collate):
        self.collate_fn = collate_fn

    def __call__(self, data):
        if isinstance(data, WholeBatch):
            return list(data) if self.collate_fn is default_collate else \
                self.collate_fn(data.samples())
        return self.collate_fn(data)


def on_device_problem(dataset, collate_fn: Callable) -> str | None:
    """Why `data_loader.args.on_device` cannot serve `dataset`, or None: it slices tensors held
    in memory, so the data set must be a `TensorDataset` with torch's own `__getitem__` (an
    `InMemoryDataset`: augmentation as its `batch_transform`), batched by `default_collate`."""
    name = type(dataset).__name__
    if not isinstance(dataset, TensorDataset):
        return (f"the data set ({name}) is not held in memory as tensors; on_device needs a "
                f"TensorDataset (base.in_memory.InMemoryDataset); set it false")
    if type(dataset).__getitem__ is not TensorDataset.__getitem__:
        return (f"the data set ({name}) makes each sample in its own __getitem__, which slicing "
                f"whole batches would skip; give it as an InMemoryDataset with a batch_transform, "
                f"or set on_device false")
    if collate_fn is not default_collate:
        return "a collate_fn of your own does not run on batches sliced on the device; set " \
               "on_device false"
    return None


def placed(dataset: TensorDataset, device: torch.device) -> list[torch.Tensor]:
    """`dataset`'s tensors on `device`, moved once (the training and validation loaders share
    them); a `UserError` naming the option when they do not fit in the device's free memory
    (with room left for the model)."""
    earlier = getattr(dataset, "_placed", None)  # (device, tensors)
    if earlier is not None and earlier[0] == device:
        return earlier[1]
    size = sum(tensor.numel() * tensor.element_size() for tensor in dataset.tensors)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if size > 0.8 * free:
            raise UserError(f"data_loader.args.on_device: the data set ({size / 2**30:.2f} GiB) "
                            f"does not fit in {device}'s free memory ({free / 2**30:.2f} GiB, "
                            f"leaving a fifth for the model); set it false")
    dataset._placed = (device, [tensor.to(device) for tensor in dataset.tensors])
    return dataset._placed[1]
