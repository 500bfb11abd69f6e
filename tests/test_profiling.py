"""train.py --profile: torch.profiler over a few steady-state steps — a trace TensorBoard and
Perfetto read, the top operators — without changing what is trained; a user's own step too."""
import json

import pytest
import torch

import train
from tests.conftest import small_config
from tests.user_steps import register_parts_step
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def config_file(tmp_path, **trainer):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small_config(tmp_path / "saved", **{"epochs": 1, **trainer})))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["default", "users"])
def test_a_profiled_run_writes_a_trace_of_its_steps_and_trains_the_same(tmp_path, step,
                                                                          monkeypatch):
    extra = register_parts_step(monkeypatch) if step == "users" else []
    train.main(["-c", config_file(tmp_path), "--run-id", "plain", *extra])
    train.main(["-c", config_file(tmp_path), "--run-id", "profiled", "--profile", "3", *extra])
    folder = tmp_path / "saved/log/Digits_CNN/profiled/profile"
    traces = list(folder.glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert len({name for name in names if name.startswith("ProfilerStep#")}) == 3
    assert "aten::convolution" in names and any("Optimizer.step" in name for name in names)
    assert "aten::" in (folder / "top_operators.txt").read_text()
    runs = tmp_path / "saved/models/Digits_CNN"
    plain = load_checkpoint(runs / "plain/checkpoint-epoch1.pth")["state_dict"]
    profiled = load_checkpoint(runs / "profiled/checkpoint-epoch1.pth")["state_dict"]
    assert all(torch.equal(plain[key], profiled[key]) for key in plain)  # nothing changed
    info = (tmp_path / "saved/log/Digits_CNN/profiled/info.log").read_text()
    assert "Profile of 3 steps (after 6): the top operators by CPU time" in info


def test_a_run_too_short_to_profile_says_so_and_a_bad_count_is_one_line(tmp_path):
    train.main(["-c", config_file(tmp_path, len_epoch=4), "--run-id", "short", "--profile", "3"])
    assert not (tmp_path / "saved/log/Digits_CNN/short/profile").exists() or not list(
        (tmp_path / "saved/log/Digits_CNN/short/profile").glob("*.json"))
    info = (tmp_path / "saved/log/Digits_CNN/short/info.log").read_text()
    assert "Warning: --profile 3: the run ended after 0 of the steps to profile (it waits 5, " \
           "warms up 1); no trace was written" in info
    with pytest.raises(UserError, match="^--profile: expected a positive number of steps, got 0$"):
        train.main(["-c", config_file(tmp_path), "--profile", "0"])
