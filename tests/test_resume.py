"""base/resume.py: a checkpoint's optimizer and scheduler states in a run whose config changed."""
import logging

import pytest
import torch

from base.resume import SCHEDULE_PROGRESS, changed_args_of, continue_schedule, optimizer_block


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
