"""base/in_memory.py: in-memory data fetched a whole batch at a time gives exactly the batches
of the per-sample path — the same order, the same values, the same random transforms — in the
main process and in workers."""
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from base.base_data_loader import BaseDataLoader
from base.in_memory import InMemoryDataset, WholeBatch


class PerSample(TensorDataset):
    """A `TensorDataset` fetched sample by sample (torch's `__getitem__`, no `__getitems__`)."""


class Augmented(Dataset):
    """Random noise drawn per sample, as a data set's transform does: per sample in
    `__getitem__`; `Batched` draws it for the whole batch in `__getitems__`, sample by sample
    in the same order."""

    def __init__(self, n: int = 60):
        self.images, self.labels = torch.rand(n, 3, 4), torch.arange(n) % 5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index] + torch.randn(3, 4), self.labels[index]


class Batched(Augmented):
    def __getitems__(self, indices):
        index = torch.tensor([i for i in indices])  # iterating the batch seeds a worker
        noise = torch.stack([torch.randn(3, 4) for _ in range(len(index))])
        return WholeBatch([self.images[index] + noise, self.labels[index]])


def loader_of(dataset, **kwargs) -> BaseDataLoader:
    options = {"batch_size": 8, "shuffle": True, "validation_split": 0.25, "num_workers": 0,
               "seed": 3, **kwargs}
    return BaseDataLoader(dataset, **options)


def batches(loader, epoch: int) -> list[list[torch.Tensor]]:
    loader.set_epoch(epoch)
    return [list(batch) for batch in loader]


def same(first, second) -> bool:
    return len(first) == len(second) and all(
        len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
        for a, b in zip(first, second))


def test_a_tensor_dataset_is_fetched_whole_batches_over_the_same_tensors():
    dataset = TensorDataset(torch.rand(20, 2), torch.arange(20))
    loader = loader_of(dataset)
    assert type(loader.dataset) is InMemoryDataset
    assert all(a is b for a, b in zip(loader.dataset.tensors, dataset.tensors))  # no copy
    assert type(loader_of(PerSample(*dataset.tensors)).dataset) is PerSample  # its own class


@pytest.mark.parametrize("num_workers", [0, 2])
def test_whole_batches_are_the_per_sample_batches_value_for_value(num_workers):
    tensors = (torch.rand(50, 1, 4, 4), torch.randint(0, 10, (50,)))
    fast, slow = (loader_of(kind(*tensors), num_workers=num_workers)
                  for kind in (TensorDataset, PerSample))
    for epoch in (1, 2):
        assert same(batches(fast, epoch), batches(slow, epoch))
    assert same([list(b) for b in fast.split_validation()],
                [list(b) for b in slow.split_validation()])
    fast.set_epoch(2, start_batch=2)  # a resumed epoch: the same batches from the third on
    assert same([list(b) for b in fast], batches(slow, 2)[2:])


def test_random_transforms_of_whole_batches_are_seeded_as_per_sample_ones_in_workers():
    """With workers each batch's generators are seeded from (seed, epoch, batch): the noise a
    `__getitems__` draws is the noise the per-sample path draws, whichever worker fetches."""
    torch.manual_seed(0)
    per_sample, whole = Augmented(), Batched()
    whole.images, whole.labels = per_sample.images, per_sample.labels
    for workers in (1, 2):
        assert same(batches(loader_of(whole, num_workers=workers), 1),
                    batches(loader_of(per_sample, num_workers=2), 1))


def test_a_collate_fn_of_the_users_own_gets_the_samples_of_a_whole_batch():
    tensors = (torch.rand(30, 2), torch.arange(30))
    collected = []

    def collate(samples):
        collected.append(len(samples))
        return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])
    fast = loader_of(TensorDataset(*tensors), collate_fn=collate)
    slow = loader_of(PerSample(*tensors), collate_fn=collate)
    assert same(batches(fast, 1), batches(slow, 1)) and collected and 8 in collected


@pytest.mark.slow
def test_the_default_run_trains_the_same_weights_fetching_whole_batches(tmp_path):
    """The digits config, two epochs with whole batches and with per-sample fetching: the same
    weights bit for bit (the epoch table cannot differ either)."""
    from tests.conftest import build
    from utils.seeding import seed_everything

    weights = []
    for fetch in ("whole", "per sample"):
        seed_everything(0)
        trainer = build(tmp_path, {"trainer.epochs": 2, "trainer.save_dir": str(tmp_path / fetch)})
        if fetch == "per sample":
            trainer.data_loader.dataset.__class__ = PerSample
        else:
            assert type(trainer.data_loader.dataset) is InMemoryDataset
        trainer.config.make_run_dirs()
        trainer.train()
        weights.append(trainer.model.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def sliced(loader, epoch: int, start_batch: int = 0) -> list[list[torch.Tensor]]:
    loader.set_epoch(epoch, start_batch)
    return [list(batch) for batch in loader]


def test_on_device_slices_the_batches_the_data_loader_gives():
    """`on_device` on the CPU: no DataLoader iteration, the same batches — training epochs, a
    resumed epoch's rest, validation — value for value."""
    tensors = (torch.rand(70, 1, 4, 4), torch.randint(0, 10, (70,)))
    loader = loader_of(TensorDataset(*tensors))
    device = loader_of(TensorDataset(*tensors), on_device=True)
    device.place(torch.device("cpu"))
    valid, device_valid = loader.split_validation(), device.split_validation()
    device_valid.place(torch.device("cpu"))
    for epoch in (1, 2):
        assert same(sliced(device, epoch), sliced(loader, epoch))
    assert same(sliced(device, 2, start_batch=3), sliced(loader, 2)[3:])
    assert same([list(b) for b in device_valid], [list(b) for b in valid])
    assert len(device) == len(loader)


def test_a_batch_transform_on_the_device_draws_what_it_draws_in_the_main_process():
    """Random augmentation of whole batches: sliced on the device it consumes the global
    generator exactly as `__getitems__` does in the main process (num_workers 0)."""
    from tests.noisy_data import add_noise

    tensors = (torch.rand(40, 1, 4, 4), torch.randint(0, 10, (40,)))
    results = []
    for on_device in (False, True):
        loader = loader_of(InMemoryDataset(*tensors, batch_transform=add_noise),
                           on_device=on_device)
        loader.place(torch.device("cpu"))
        torch.manual_seed(5)
        results.append(sliced(loader, 1))
    assert same(*results)
    assert not torch.equal(results[0][0][0], tensors[0][:8])  # the noise is there


class Files(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.zeros(2), 0


@pytest.mark.parametrize("dataset, collate, message", [
    (Files(), None, "the data set (Files) is not held in memory as tensors"),
    (PerSample(torch.rand(10, 2), torch.arange(10)), None, None),
    (type("Drawn", (TensorDataset,), {"__getitem__": lambda self, i: self.tensors[0][i]})(
        torch.rand(10, 2)), None, "the data set (Drawn) makes each sample in its own __getitem__"),
    (TensorDataset(torch.rand(10, 2)), lambda samples: samples,
     "a collate_fn of your own does not run on batches sliced on the device"),
])
def test_on_device_refuses_what_it_cannot_slice_in_one_line(dataset, collate, message):
    from utils.errors import UserError

    extra = {"collate_fn": collate} if collate else {}
    if message is None:  # a subclass with torch's own __getitem__ is sliced
        loader_of(dataset, on_device=True, **extra)
        return
    with pytest.raises(UserError) as raised:
        loader_of(dataset, on_device=True, **extra)
    assert str(raised.value).startswith(f"data_loader.args.on_device: {message}")


def test_a_data_set_too_large_for_the_devices_free_memory_is_one_line(monkeypatch):
    from base.in_memory import placed
    from utils.errors import UserError

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 8000))
    with pytest.raises(UserError, match=r"^data_loader\.args\.on_device: the data set "
                                        r"\(0\.00 GiB\) does not fit in cuda:0's free memory"):
        placed(TensorDataset(torch.zeros(1000)), torch.device("cuda:0"))  # 4,000 bytes


@pytest.mark.slow
def test_a_run_on_device_with_batch_augmentation_resumes_exactly(tmp_path):
    """The digits with noise drawn per batch, served `on_device`: stopped mid-epoch and
    resumed, the weights are those of the run that was never stopped, bit for bit."""
    import tests.noisy_data  # noqa: F401  (NoisyBatchesDigitsDataLoader)
    from tests.conftest import small_config, straight_and_resumed

    config = small_config(tmp_path / "saved", epochs=2)
    config["data_loader"]["type"] = "NoisyBatchesDigitsDataLoader"
    config["data_loader"]["args"]["on_device"] = True
    whole, cut = (checkpoint["state_dict"] for checkpoint in
                  straight_and_resumed(tmp_path, config, 14))
    assert all(torch.equal(whole[key], cut[key]) for key in whole)


def test_a_tensor_datasets_own_attributes_and_a_none_collate_fn_stay_as_in_torch():
    dataset = TensorDataset(torch.rand(20, 2), torch.arange(20) % 2)
    dataset.classes = ["cat", "dog"]  # test.py names the classes with these
    loader = loader_of(dataset, collate_fn=None)  # DataLoader's default, as in torch
    assert loader.dataset.classes == ["cat", "dog"]
    assert same(batches(loader, 1), batches(loader_of(PerSample(*dataset.tensors)), 1))


def test_on_device_moves_the_data_once_for_training_and_validation():
    loader = loader_of(TensorDataset(torch.rand(40, 2), torch.arange(40)), on_device=True)
    valid = loader.split_validation()
    device = torch.device("cpu")
    loader.place(device)
    valid.place(device)
    assert all(a is b for a, b in zip(loader._placed, valid._placed))
