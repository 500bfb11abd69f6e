"""runs/resume.py: a checkpoint's optimizer and scheduler states in a run whose config changed."""
import json
import logging
from pathlib import Path

import pytest
import torch

from config.model_options import closure_problem
from runs.resume import (
    SCHEDULE_PROGRESS,
    changed_args_of,
    continue_schedule,
    optimizer_block,
)
from tests.conftest import build
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError
from utils.interrupts import TrainingInterrupted


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
    from runs.resume import restore_scheduler

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
    with pytest.raises(CheckpointError, match=rf"^{path}: its optimizer state does not fit this "
                                              rf"run's optimizer \(exp_avg of parameter 0 is "
                                              rf"\(3,\), the parameter \(32, 1, 3, 3\)\)$"):
        build(tmp_path, epochs=2, len_epoch=2).resume(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The checkpoint of the real config after one epoch of 2 steps (Adam, StepLR), and one
    taken mid-epoch after its first step."""
    from tests.conftest import signal_at

    folder = tmp_path_factory.mktemp("trained")
    trainer = build(folder, epochs=1, len_epoch=2)
    trainer.config.make_run_dirs()
    trainer.train()
    epoch = load_checkpoint(trainer.checkpoint_dir / "checkpoint-epoch1.pth")
    trainer = build(folder, epochs=1, len_epoch=2)
    trainer.config.make_run_dirs()
    trainer.callbacks = [signal_at(1, 15)]
    with pytest.raises(TrainingInterrupted):  # saved mid-epoch
        trainer.train()
    middle = load_checkpoint(next(trainer.checkpoint_dir.glob("checkpoint-interrupted*.pth")))
    assert middle["epoch_step"] == 1
    return {"epoch": epoch, "middle": middle}


def parameter_state(checkpoint):
    return checkpoint["optimizer"]["state"][0]


# Every field of a real checkpoint made malformed by hand: each is one line naming the file and
# the field before anything is built or written, instead of a traceback (today's main: 20 of
# these ended in a traceback from inside torch, some mid-run; 7 loaded silently).
MALFORMED = [
    ("arch", lambda c: c.update(arch=5), "arch must be a name"),
    ("best_epoch", lambda c: c.update(best_epoch=99), "best_epoch 99 is past its epoch 1"),
    ("not_improved_count", lambda c: c.update(not_improved_count=7),
     "not_improved_count 7 is past its epoch 1"),
    ("epoch_step", lambda c: c.update(epoch_step=2, epoch_state=None),
     "epoch_step 2 without the epoch's state"),
    ("optimizer", lambda c: c.update(optimizer={}), "it needs a dict of per-parameter state"),
    ("optimizer.state", lambda c: c["optimizer"].update(state=[1]),
     "it needs a dict of per-parameter state"),
    ("optimizer.state[0]", lambda c: c["optimizer"]["state"].update({0: "x"}),
     "the state of parameter 0 is a string, not a dict"),
    ("optimizer.state[0].step", lambda c: parameter_state(c).update(step="x"),
     "step of parameter 0 is a string"),
    ("optimizer.state[0].exp_avg", lambda c: parameter_state(c).update(exp_avg=[1.0]),
     "exp_avg of parameter 0 is a list of 1"),
    ("optimizer.state[0].exp_avg_sq", lambda c: parameter_state(c).update(
        exp_avg_sq=torch.tensor(1.0)), "exp_avg_sq of parameter 0 is (), the parameter"),
    ("optimizer.param_groups", lambda c: c["optimizer"].update(param_groups="x"),
     "a list of param_groups"),
    ("optimizer.param_groups[0].params", lambda c: c["optimizer"]["param_groups"][0].update(
        params=[0] * len(c["optimizer"]["param_groups"][0]["params"])),
     "parameter ids of its param_groups are not distinct integers"),
    ("optimizer.param_groups[0].lr", lambda c: c["optimizer"]["param_groups"][0].update(lr="x"),
     "param_groups[0].lr is a string, not a number"),
    ("optimizer.param_groups[0].lr", lambda c: c["optimizer"]["param_groups"][0].pop("lr"),
     "param_groups[0] lacks lr"),
    ("optimizer.param_groups[0].betas", lambda c: c["optimizer"]["param_groups"][0].update(
        betas=3), "param_groups[0].betas is a number, not a list of 2"),
    ("lr_scheduler.step_size", lambda c: c["lr_scheduler"].update(step_size="x"),
     "lr_scheduler.step_size is a string, not a number"),
    ("lr_scheduler.base_lrs", lambda c: c["lr_scheduler"].update(base_lrs=[]),
     "lr_scheduler.base_lrs is a list of 0, not a list of 1"),
    ("lr_scheduler._step_count", lambda c: c["lr_scheduler"].update(_step_count="x"),
     "lr_scheduler._step_count is a string, not a number"),
    ("lr_scheduler._last_lr", lambda c: c["lr_scheduler"].update(_last_lr="x"),
     "lr_scheduler._last_lr is a string, not a list of 1"),
    ("rng_state", lambda c: c.update(rng_state={"torch": 5}),
     "rng_states[0] is not a dict of python, numpy, torch and cuda states"),
    ("rng_state.torch", lambda c: c["rng_state"].update(torch=torch.zeros(3, dtype=torch.uint8)),
     "rng_states[0].torch is a tensor of shape (3,) torch.uint8, not a tensor of shape"),
    ("rng_state.python.state", lambda c: c["rng_state"]["python"].update(state=[1, 2]),
     "rng_states[0].python.state is a list of 2, not a list of 625"),
    ("rng_state.numpy", lambda c: c["rng_state"].update(numpy=["MT19937", 1]),
     "rng_states[0].numpy is a list of 2, not a dict"),
    ("rng_state.cuda", lambda c: c["rng_state"].update(cuda="x"),
     "rng_states[0].cuda is not a list of CUDA generator states"),
]


@pytest.mark.parametrize("field, edit, message", MALFORMED,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(MALFORMED)])
def test_every_malformed_field_is_one_line_naming_the_file_and_the_field(
        tmp_path, trained, field, edit, message):
    import copy
    import re

    checkpoint = copy.deepcopy(trained["epoch"])
    edit(checkpoint)
    path = tmp_path / "edited.pth"
    save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        build(tmp_path, epochs=2, len_epoch=2).resume(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)
    assert re.search(re.escape(message), str(raised.value)), str(raised.value)
    assert not (tmp_path / "saved").exists()  # nothing written


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.update(train_metrics="x"),
     "epoch_state.train_metrics is a string, not a dict"),
    (lambda state: state.pop("train_metrics"), "epoch_state lacks train_metrics"),
    (lambda state: state.update(len_epoch="two"), "epoch_state.len_epoch is a string"),
    (lambda state: state["train_metrics"].update(sums="x"),
     "epoch_state.train_metrics cannot be restored"),
])
def test_a_malformed_mid_epoch_state_is_one_line(tmp_path, trained, edit, message):
    import copy

    checkpoint = copy.deepcopy(trained["middle"])
    edit(checkpoint["epoch_state"])
    path = tmp_path / "edited.pth"
    save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its {message}"):
        build(tmp_path, epochs=2, len_epoch=2).resume(path)


def test_an_epoch_step_past_the_epoch_is_refused(tmp_path, trained):
    import copy

    checkpoint = copy.deepcopy(trained["middle"])
    checkpoint["epoch_step"] = 3  # 2: training done, stopped during validation (allowed)
    path = tmp_path / "edited.pth"
    save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its epoch_step 3 is past the end of "
                                              rf"an epoch of 2 steps"):
        build(tmp_path, epochs=2, len_epoch=2).resume(path)


def stepped(make, parameters):
    """Optimizer `make(parameters)` after two steps on a quadratic loss."""
    optimizer = make(parameters)
    for _ in range(2):
        optimizer.zero_grad()
        sum((p ** 2).sum() for p in parameters).backward()
        optimizer.step()
    return optimizer


# Every torch optimizer a config may name: not SparseAdam (sparse gradients) nor one whose step
# needs a closure (L-BFGS), which the config check refuses.
TORCH_OPTIMIZERS = [name for name in dir(torch.optim) if isinstance(
    getattr(torch.optim, name), type) and issubclass(getattr(torch.optim, name),
                                                     torch.optim.Optimizer)
                    and name not in ("Optimizer", "SparseAdam")
                    and closure_problem(getattr(torch.optim, name), name) is None]


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_the_state_of_every_torch_optimizer_is_accepted_and_another_models_refused(name):
    """Each torch optimizer's own state (elementwise, Adafactor's factored, the numbers it
    keeps as 0-dim tensors) fits; the same state over parameters of other shapes does not. A
    torch release with a state of another make fails here, not in users' runs."""
    from runs.resume import _optimizer_state_problem

    def make(parameters):
        options = {"momentum": 0.9} if name == "SGD" else {}
        return getattr(torch.optim, name)(parameters, lr=0.01, **options)

    def parameters(*shapes):
        return [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]

    shapes = [(4, 6), (6, 3)] if name == "Muon" else [(3, 4, 5), (5,), (4, 4)]  # Muon: 2-D
    state = stepped(make, parameters(*shapes)).state_dict()
    assert state["state"], "the optimizer kept no state to check"
    assert _optimizer_state_problem(make(parameters(*shapes)), state) is None
    others = [(5, 6), (6, 4)] if name == "Muon" else [(3, 4, 6), (6,), (4, 5)]
    problem = _optimizer_state_problem(make(parameters(*others)), state)
    assert problem is not None and "the parameter" in problem


def test_a_scheduler_that_now_steps_at_another_interval_starts_afresh_with_a_warning(caplog):
    from runs.resume import restore_scheduler

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer(), step_size=2)
    saved = torch.optim.lr_scheduler.StepLR(optimizer(), step_size=2)
    for _ in range(3):
        saved.optimizer.step(), saved.step()
    checkpoint = {"lr_scheduler": saved.state_dict(),
                  "config": {"lr_scheduler": {"type": "StepLR", "args": {}}}}
    with caplog.at_level(logging.WARNING):
        restore_scheduler("", scheduler, checkpoint,
                          {"lr_scheduler": {"type": "StepLR", "interval": "step"}},
                          logging.getLogger("test"), steps=30)
    assert scheduler.last_epoch == 0
    assert "was StepLR once every epoch in the checkpoint, now StepLR once every step" in \
        caplog.text


def test_a_grad_scaler_state_of_another_make_is_refused():
    from runs.resume import restore_scaler

    scaler = torch.amp.GradScaler("cpu")
    restore_scaler(scaler, {**scaler.state_dict(), "scale": 1024.0})
    assert scaler.get_scale() == 1024.0
    with pytest.raises(CheckpointError, match=r"grad scaler state does not fit \(scaler.scale "
                                              r"is a string, not a number\)"):
        restore_scaler(scaler, {**scaler.state_dict(), "scale": "x"})


@pytest.mark.slow
def test_warm_up_then_cosine_from_the_config_resumes_exactly_and_logs_its_curve(tmp_path):
    """SequentialLR (linear warm-up, then cosine) stepped every optimizer step: stopped in the
    middle of an epoch and resumed, the weights are the uninterrupted run's bit for bit, and
    the learning rates TensorBoard shows are the schedule's, step by step."""
    from tests.conftest import run_folders, small_config, straight_and_resumed
    from tests.test_logger import read_scalars
    from tests.test_parse_config import schedule_of

    config = small_config(tmp_path / "saved", epochs=2, tensorboard=True, log_step=1,
                          len_epoch=8)
    config["optimizer"]["args"]["lr"] = 0.01
    config["lr_scheduler"] = {"type": "SequentialLR", "interval": "step", "args": {
        "schedulers": [{"type": "LinearLR", "args": {"start_factor": 0.1, "total_iters": 4}},
                       {"type": "CosineAnnealingLR", "args": {"T_max": 12}}],
        "milestones": [4]}}
    whole, cut = straight_and_resumed(tmp_path, config, 11)  # stopped in epoch 2, step 3
    assert all(torch.equal(whole["state_dict"][key], cut["state_dict"][key])
               for key in whole["state_dict"])
    assert whole["lr_scheduler"] == cut["lr_scheduler"]
    logged = read_scalars(tmp_path / "saved/log/Digits_CNN/whole")["learning_rate"]
    schedule = {key: value for key, value in config["lr_scheduler"].items() if key != "interval"}
    # at global step s (s steps done) TensorBoard shows the rate step s used
    assert [step for step, _ in logged] == list(range(1, 17))
    assert [value for _, value in logged] == pytest.approx(schedule_of(schedule, 16, lr=0.01),
                                                           rel=1e-6)
    assert len(run_folders(tmp_path / "saved")) == 2


def test_a_composed_schedule_whose_args_changed_is_refused_in_one_line():
    """Its nested schedules cannot continue from a saved step the way one schedule does."""
    from parse_config import ConfigParser
    from runs.resume import restore_scheduler
    from utils.errors import CheckpointError

    block = {"type": "SequentialLR", "args": {"schedulers": [
        {"type": "LinearLR", "args": {"total_iters": 4}},
        {"type": "CosineAnnealingLR", "args": {"T_max": 12}}], "milestones": [4]}}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = ConfigParser({"lr_scheduler": block}).init_scheduler(
        "lr_scheduler", torch.optim.lr_scheduler, optimizer)
    optimizer.step()
    scheduler.step()
    checkpoint = {"lr_scheduler": scheduler.state_dict(), "config": {"lr_scheduler": block}}
    restore_scheduler("", scheduler, checkpoint, {"lr_scheduler": block}, logging.getLogger(), 1)
    changed = json.loads(json.dumps(block))
    changed["args"]["schedulers"][1]["args"]["T_max"] = 30
    with pytest.raises(CheckpointError, match=r"^its lr_scheduler is a SequentialLR whose args "
                                              r"changed since \(schedulers\); a composed schedule "
                                              r"resumes only as it was saved"):
        restore_scheduler("", scheduler, checkpoint, {"lr_scheduler": changed},
                          logging.getLogger(), 1)
