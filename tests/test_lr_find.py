"""train.py --lr-find: the learning-rate range test — a rate to paste, the loss curve, and
nothing of the run changed or written; a user's own step too."""
import csv
import json
import re

import pytest
import torch

import train
from step.lr_find import range_test
from tests.conftest import build, small_config
from tests.user_steps import register_parts_step
from utils.errors import UserError


@pytest.mark.slow
def test_the_range_test_leaves_the_trainer_as_it_was_and_finds_a_falling_loss(tmp_path):
    trainer = build(tmp_path)
    weights = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    generator = torch.get_rng_state()
    result = range_test(trainer, steps=40)
    assert len(result.rates) == len(result.losses) == len(result.smoothed) <= 40
    assert result.rates == sorted(result.rates) and result.rates[0] == pytest.approx(1e-7)
    assert all(torch.equal(weights[key], value) for key, value in
               trainer.model.state_dict().items())
    assert trainer.optimizers[""].state_dict()["state"] == {}  # Adam's moments: none yet
    assert trainer.global_step == 0 and trainer.epoch_step == 0
    assert torch.equal(torch.get_rng_state(), generator)
    assert result.suggestion is not None and result.suggestion < result.lowest
    assert min(result.smoothed) < result.smoothed[0]  # the loss fell somewhere on the way


@pytest.mark.slow
@pytest.mark.parametrize("step", ["default", "users"])
def test_lr_find_prints_a_rate_to_paste_writes_the_curve_and_no_run(tmp_path, capsys, step,
                                                                    monkeypatch):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved")))
    extra = register_parts_step(monkeypatch) if step == "users" else []
    train.main(["-c", str(config), "--lr-find", "60", *extra])
    out = capsys.readouterr().out
    pasted = re.search(r"To use it: -o optimizer\.args\.lr=(\S+)", out)
    assert pasted is not None, out
    rate = float(pasted.group(1))
    assert 1e-7 < rate < 10
    with open(tmp_path / "saved/lr_find/Digits_CNN.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["lr", "loss", "smoothed"] and 5 < len(rows) <= 61
    assert (tmp_path / "saved/lr_find/Digits_CNN.png").stat().st_size > 0
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == ["lr_find"]
    # the pasted rate trains (a dry run of it)
    train.main(["-c", str(config), "-o", f"optimizer.args.lr={pasted.group(1)}", "--dry-run",
                *extra])


def test_too_few_steps_or_with_another_mode_is_one_line(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved")))
    with pytest.raises(UserError, match=r"^--lr-find: expected at least 5 steps, got 2$"):
        train.main(["-c", str(config), "--lr-find", "2"])
    with pytest.raises(UserError, match=r"not with --dry-run or --folds"):
        train.main(["-c", str(config), "--lr-find", "--dry-run"])
