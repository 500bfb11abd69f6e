import pytest
import torch
from torch.utils.data import TensorDataset

from base.base_data_loader import BaseDataLoader, split_indices
from base.samplers import EpochSampler


def make_loader(n=100, **kwargs) -> BaseDataLoader:
    dataset = TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))
    options = {"batch_size": 10, "shuffle": True, "validation_split": 0.2, "num_workers": 0,
               "seed": 7, **kwargs}
    return BaseDataLoader(dataset, **options)


def epoch_order(loader: BaseDataLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([target for _, target in loader]).tolist()


def test_fraction_and_count_split_disjointly_and_cover_everything():
    for split, n_valid in ((0.2, 20), (15, 15), (0.0, 0)):
        train, valid = split_indices(100, split, seed=1)
        assert len(valid) == n_valid and len(train) == 100 - n_valid
        assert sorted(train + valid) == list(range(100))


@pytest.mark.parametrize("split", [1.0, -0.1, 100, 250, -3, True, "0.1"])
def test_out_of_range_split_is_an_error(split):
    with pytest.raises(ValueError, match="validation_split"):
        split_indices(100, split, seed=1)


def test_split_leaving_no_training_data_is_an_error():
    with pytest.raises(ValueError, match="validation_split"):
        split_indices(3, 3, seed=0)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_a_fraction_that_holds_out_no_sample_is_named_not_left_to_the_monitor(n):
    """A one- or two-sample data set with the default 0.1: no validation sample at all, which
    before surfaced only as "'val_loss' is not a logged value"."""
    with pytest.raises(ValueError) as raised:
        split_indices(n, 0.1, seed=0)
    assert str(raised.value) == (
        f"data_loader.args.validation_split: 0.1 of {n} sample{'s' if n > 1 else ''} is no "
        f"validation sample at all; give a sample count (e.g. 1) or a larger fraction, or 0 for "
        f"no validation")
    assert split_indices(10, 0.1, seed=0)[1] and not split_indices(n, 0.0, seed=0)[1]


def test_validation_loader_holds_the_held_out_samples():
    loader = make_loader()
    valid = loader.split_validation()
    train_seen = set(epoch_order(loader, 1))
    valid_seen = set(torch.cat([t for _, t in valid]).tolist())
    assert len(train_seen) == 80 and len(valid_seen) == 20 and not train_seen & valid_seen
    assert make_loader(validation_split=0.0).split_validation() is None


def test_building_and_iterating_never_touches_the_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = make_loader()
    epoch_order(loader, 1)
    list(loader.split_validation())
    assert torch.equal(before, torch.get_rng_state())


def test_epoch_order_depends_only_on_seed_and_epoch():
    first, second = make_loader(), make_loader()
    orders = [epoch_order(first, e) for e in (1, 2, 3)]
    assert epoch_order(second, 3) == orders[2]   # no epochs 1, 2 in this loader
    assert orders[0] != orders[1]                 # shuffled anew each epoch
    assert epoch_order(make_loader(seed=8), 1) != orders[0]
    assert epoch_order(make_loader(shuffle=False), 1) == sorted(orders[0])


class WorkerSeedDataset(torch.utils.data.Dataset):
    """Returns the seed of the worker process that loaded each sample."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.initial_seed() % 1_000_003, index


def worker_seeds(seed: int, epoch: int) -> list[int]:
    loader = BaseDataLoader(WorkerSeedDataset(), batch_size=2, shuffle=True, validation_split=0,
                            num_workers=2, seed=seed)
    loader.set_epoch(epoch)
    return sorted(torch.cat([seeds for seeds, _ in loader]).tolist())


def test_worker_seeds_depend_only_on_seed_and_epoch():
    assert worker_seeds(5, 2) == worker_seeds(5, 2)
    assert worker_seeds(5, 2) != worker_seeds(5, 3)
    assert worker_seeds(5, 2) != worker_seeds(6, 2)


def test_sampler_gives_a_new_order_on_each_pass_within_an_epoch():
    sampler = EpochSampler(range(50), shuffle=True, seed=3)
    sampler.set_epoch(4)
    first, second = list(sampler), list(sampler)
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    sampler.set_epoch(4)
    assert list(sampler) == first


class NoisyDataset(torch.utils.data.Dataset):
    """Random augmentation: each sample is its index plus noise from the global generator."""

    def __len__(self):
        return 30

    def __getitem__(self, index):
        return torch.tensor(float(index)) + torch.rand(()), index


def noisy_batches(num_workers: int, epoch: int, start_batch: int = 0) -> list[tuple]:
    loader = BaseDataLoader(NoisyDataset(), batch_size=4, shuffle=True, validation_split=0,
                            num_workers=num_workers, seed=11)
    loader.set_epoch(epoch, start_batch)
    return [(values.tolist(), indices.tolist()) for values, indices in loader]


def test_random_transforms_in_workers_are_the_same_whichever_worker_loads_a_batch():
    two, one = noisy_batches(2, epoch=2), noisy_batches(1, epoch=2)
    assert two == one and len(two) == 8
    assert noisy_batches(2, epoch=3) != two


def test_a_resumed_epoch_continues_with_the_same_batches_and_transforms():
    full = noisy_batches(2, epoch=2)
    assert noisy_batches(2, epoch=2, start_batch=3) == full[3:]
    # iteration-based training: a second pass over the data within epoch 2
    loader = BaseDataLoader(NoisyDataset(), batch_size=4, shuffle=True, validation_split=0,
                            num_workers=2, seed=11)
    loader.set_epoch(2)
    first_pass = [(v.tolist(), i.tolist()) for v, i in loader]
    second_pass = [(v.tolist(), i.tolist()) for v, i in loader]
    assert first_pass == full and second_pass != full
    assert noisy_batches(2, epoch=2, start_batch=8 + 5) == second_pass[5:]


def test_a_resumed_epoch_in_the_main_process_skips_at_the_sampler():
    loader = make_loader()
    loader.set_epoch(4)
    full = [target.tolist() for _, target in loader]
    loader.set_epoch(4, start_batch=2)
    assert len(loader) == len(full) - 2
    assert [target.tolist() for _, target in loader] == full[2:]


def test_a_resumed_iteration_based_epoch_with_drop_last_starts_at_the_right_batch():
    from itertools import islice

    from step.positions import inf_loop

    def batches(start: int, count: int) -> list[list[int]]:
        loader = BaseDataLoader(NoisyDataset(), batch_size=4, shuffle=True, validation_split=0,
                                num_workers=0, seed=1, drop_last=True)  # 7 batches a pass
        loader.set_epoch(3, start)
        return [indices.tolist() for _, indices in islice(inf_loop(loader), count)]
    full = batches(0, 20)
    assert batches(9, 11) == full[9:] and batches(14, 6) == full[14:]


def test_stop_signals_are_forgotten_when_training_starts_again():
    import signal

    from utils.interrupts import StopSignals

    signals = StopSignals()
    with signals:
        signal.raise_signal(signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with signals:
        assert not signals.requested


def test_stop_signals_entered_again_keep_what_came_in():
    import signal

    from utils.interrupts import StopSignals

    signals = StopSignals()
    with signals:
        signal.raise_signal(signal.SIGTERM)  # while train.py opens the run folder
        with signals:  # the trainer's loop
            assert signals.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # still ours
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_release_workers_stops_persistent_workers_at_once():
    from base.base_data_loader import release_workers

    loader = BaseDataLoader(NoisyDataset(), batch_size=4, shuffle=True, validation_split=0,
                            num_workers=2, seed=1, persistent_workers=True)
    next(iter(loader))  # left part-way, as a first-batch check or a stop leaves it
    workers = loader._iterator._workers
    assert all(worker.is_alive() for worker in workers)
    release_workers(loader, None)
    assert loader._iterator is None and not any(worker.is_alive() for worker in workers)
    assert len(list(loader)) == 8  # and the loader still works
