"""base/resume.py: a checkpoint's optimizer and scheduler states in a run whose config changed."""
import logging
from pathlib import Path

import pytest
import torch

from base.resume import SCHEDULE_PROGRESS, changed_args_of, continue_schedule, optimizer_block
from tests.conftest import build
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=10),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 0.9 ** step),
])
def test_the_private_progress_keys_are_still_in_torchs_scheduler_state(make):
    """`continue_schedule` moves these keys; a torch release that renames them fails here."""
    assert set(SCHEDULE_PROGRESS) <= set(make(optimizer()).state_dict())


def test_a_schedule_built_with_new_args_continues_from_the_saved_step():
    def one_cycle(total):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer(), max_lr=1.0, total_steps=total)

    short, expected = one_cycle(10), one_cycle(20)
    for _ in range(4):
        short.optimizer.step(), short.step()
        expected.optimizer.step(), expected.step()
    longer = one_cycle(20)
    continue_schedule(longer, short.state_dict())
    assert longer.last_epoch == 4 and longer.total_steps == 20
    assert longer.get_last_lr() == short.get_last_lr()  # the saved step's rate until it steps
    longer.optimizer.step(), longer.step()
    expected.optimizer.step(), expected.step()
    assert longer.get_last_lr() == pytest.approx(expected.get_last_lr())


def test_optimizer_blocks_by_name_and_the_args_changed_since():
    config = {"optimizer": {"type": "SGD", "args": {"lr": 0.1}},
              "optimizers": {"g": {"type": "Adam", "lr_scheduler": {"type": "StepLR"}}}}
    assert optimizer_block(config, "")["type"] == "SGD"
    assert optimizer_block(config, "g", "lr_scheduler") == {"type": "StepLR"}
    assert optimizer_block(config, "d") is None
    assert changed_args_of({"args": {"lr": 0.2, "momentum": 0.9}},
                           {"args": {"lr": 0.1, "momentum": 0.9}}) == {"lr": 0.2}


def test_restore_scheduler_of_another_type_keeps_the_new_one(caplog):
    from base.resume import restore_scheduler

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer(), step_size=2)
    checkpoint = {"lr_scheduler": {"last_epoch": 7},
                  "config": {"lr_scheduler": {"type": "ExponentialLR", "args": {}}}}
    restore_scheduler("", scheduler, checkpoint, {"lr_scheduler": {"type": "StepLR"}},
                      logging.getLogger("test"))
    assert scheduler.last_epoch == 0


def edited_checkpoint(tmp_path, edit) -> Path:
    """The real config trained for one epoch of 2 steps (Adam, StepLR once an epoch), its
    checkpoint changed by `edit` and saved as `edited.pth`."""
    trainer = build(tmp_path, epochs=1, len_epoch=2)
    trainer.config.make_run_dirs()
    trainer.train()
    checkpoint = load_checkpoint(trainer.checkpoint_dir / "checkpoint-epoch1.pth")
    edit(checkpoint)
    save_checkpoint(checkpoint, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


@pytest.mark.parametrize("last_epoch", [None, -4, 99])
def test_a_scheduler_state_that_would_restart_or_skip_the_schedule_is_refused(tmp_path,
                                                                             last_epoch):
    def edit(checkpoint):
        assert checkpoint["lr_scheduler"]["last_epoch"] == 1
        if last_epoch is None:
            del checkpoint["lr_scheduler"]["last_epoch"]
        else:
            checkpoint["lr_scheduler"]["last_epoch"] = last_epoch
    path = edited_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match=rf"^{path}: its lr_scheduler state has last_epoch "
                                              rf"{last_epoch!r}, which is not a step count of "
                                              rf"this run \(0 to 1\)"):
        build(tmp_path, epochs=2, len_epoch=2).resume(path)


def test_optimizer_state_of_another_shape_is_refused_before_training(tmp_path):
    def edit(checkpoint):
        checkpoint["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    path = edited_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match=rf"^{path}: its optimizer state does not fit the "
                                              rf"model's parameters \(exp_avg of parameter 0 is "
                                              rf"\(3,\), the parameter \(32, 1, 3, 3\)\)$"):
        build(tmp_path, epochs=2, len_epoch=2).resume(path)
