import logging
import random

import numpy as np
import pytest
import torch

from step.metrics import MetricTracker
from step.positions import inf_loop
from utils.errors import ConfigError, UserError
from utils.seeding import get_rng_state, seed_everything, set_rng_state
from utils.util import atomic_write, prepare_device, read_json, write_json


def test_metric_means_are_weighted_by_batch_size():
    tracker = MetricTracker("loss", "accuracy")
    tracker.update("accuracy", torch.tensor(1.0), n=128)   # a batch of 128, all right
    tracker.update("accuracy", torch.tensor(0.0), n=1)     # a batch of 1, wrong
    tracker.update("loss", 2.0, n=3)
    assert tracker.result() == {"loss": 2.0, "accuracy": pytest.approx(128 / 129, abs=1e-12)}
    assert tracker.count("accuracy") == 129
    tracker.reset()
    assert tracker.result() == {}


def test_metric_tracker_accumulates_many_batches_exactly():
    tracker = MetricTracker("loss")
    values = torch.rand(10_000)
    for value in values:
        tracker.update("loss", value, n=7)
    assert tracker.avg("loss") == pytest.approx(values.double().mean().item(), rel=1e-12)


def test_read_json_reports_file_line_and_column(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a": 1,\n "b": 2,\n}')
    with pytest.raises(ConfigError, match=r"c\.json:3:1: invalid JSON.*trailing commas"):
        read_json(path)
    with pytest.raises(UserError, match="no such file"):
        read_json(tmp_path / "missing.json")


def test_write_json_round_trips(tmp_path):
    write_json({"a": [1, 2], "b": {"c": None}}, tmp_path / "x.json")
    assert read_json(tmp_path / "x.json") == {"a": [1, 2], "b": {"c": None}}


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")

    def broken_writer(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken_writer)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_inf_loop_restarts_the_iterable():
    loop = inf_loop([1, 2])
    assert [next(loop) for _ in range(5)] == [1, 2, 1, 2, 1]


def test_prepare_device_falls_back_to_cpu_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with caplog.at_level(logging.WARNING):
        device, ids = prepare_device(2)
    assert device.type == "cpu" and ids == []
    assert "no CUDA GPU is available" in caplog.text
    caplog.clear()
    assert prepare_device(0) == (torch.device("cpu"), []) and caplog.text == ""


def test_prepare_device_caps_at_the_gpus_present(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with caplog.at_level(logging.WARNING):
        device, ids = prepare_device(4)
    assert device == torch.device("cuda:0") and ids == [0, 1]
    assert "only 2 GPUs" in caplog.text


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    seed_everything(11)
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)   # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    actual = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert actual[:3] == expected[:3] and torch.equal(actual[3], expected[3])


def test_atomic_write_gives_an_ordinary_file_mode(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.json", lambda file: file.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_a_generator_state_of_another_make_is_named():
    from utils.seeding import get_rng_state, rng_state_problem

    state = get_rng_state()
    assert rng_state_problem(state, "r") is None
    assert rng_state_problem({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]}, "r") is None
    state["numpy"]["key"] = state["numpy"]["key"][:10]
    assert rng_state_problem(state, "r") == ("r.numpy.key is a tensor of shape (10,) torch.int64, "
                                             "not a tensor of shape (624,) torch.int64")
    assert "not a dict of python, numpy, torch and cuda" in rng_state_problem({"torch": 1}, "r")
