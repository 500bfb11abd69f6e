"""trainer.watch: gradient norm, activations and gradient statistics at log steps."""
import json

import pytest
import torch

import train
from model.model import DigitsModel
from step.watch import Watch, watch_problems
from tests.conftest import run_folders, small_config
from tests.test_logger import read_events
from utils.errors import ConfigError


def all_hooks(model: torch.nn.Module) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  for m in model.modules())
    return modules + sum(len(p._backward_hooks or {}) for p in model.parameters())


def test_watch_writes_its_values_at_log_steps_and_leaves_no_hook(tmp_path, monkeypatch):
    import trainer.trainer as trainer_module

    seen = {}
    real_train = trainer_module.Trainer.train

    def train_and_keep(self):
        seen["trainer"] = self
        real_train(self)

    monkeypatch.setattr(trainer_module.Trainer, "train", train_and_keep)
    config = small_config(tmp_path / "saved", epochs=1, tensorboard=True, log_step=10,
                          watch={"grad_norm": True, "activations": ["conv1", "fc2"],
                                 "grad_stats": ["fc*.weight"]})
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    model = seen["trainer"].model
    assert all_hooks(model) == 0  # every handle removed when training ended
    run, = run_folders(tmp_path / "saved")
    events = read_events(tmp_path / "saved" / "log" / "Digits_CNN" / run.name)
    tags = set(events.Tags()["scalars"])
    assert {"watch/grad_norm", "watch/activations/conv1/mean", "watch/activations/fc2/std",
            "watch/gradients/fc1.weight/norm", "watch/gradients/fc2.weight/mean"} <= tags
    assert [e.step for e in events.Scalars("watch/grad_norm")] == [1, 11, 21]
    assert all(e.value > 0 for e in events.Scalars("watch/grad_norm"))
    # fc2 outputs log-probabilities' inputs: its mean is what the hook saw, not a constant
    assert len({e.value for e in events.Scalars("watch/activations/fc2/mean")}) == 3


def test_watch_records_only_on_recording_steps_and_detaches():
    model = DigitsModel()
    watch = Watch(model, {"activations": ["conv1"], "grad_stats": ["fc2.bias"]})
    watch.attach()
    assert all_hooks(model) == 2
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    assert watch.scalars() == {}  # not a recording step: nothing kept
    watch.recording = True
    output = model(torch.rand(4, 1, 8, 8))
    output.sum().backward()
    values = watch.scalars()
    assert set(values) == {"watch/activations/conv1/mean", "watch/activations/conv1/std",
                           "watch/gradients/fc2.bias/mean", "watch/gradients/fc2.bias/norm"}
    watch.detach()
    assert all_hooks(model) == 0


def test_watch_off_registers_nothing():
    model = DigitsModel()
    watch = Watch(model, None)
    watch.attach()
    assert not watch.enabled and all_hooks(model) == 0


def test_watch_names_are_checked_against_the_model():
    with pytest.raises(ConfigError) as error:
        Watch(DigitsModel(), {"activations": ["conv3"], "grad_stats": ["head.*"]})
    assert str(error.value).splitlines() == [
        "trainer.watch.activations.0: 'conv3' is not a module of the model (did you mean "
        "'conv2'?)",
        "trainer.watch.grad_stats.0: 'head.*' matches no parameter"]
    assert watch_problems({"grad_nrom": True, "activations": "conv1"}) == [
        "trainer.watch.grad_nrom: unknown key (one of grad_norm, activations, grad_stats) (did "
        "you mean 'grad_norm'?)",
        "trainer.watch.activations: expected a list of module names, got 'conv1'"]


def test_gradient_stats_are_divided_by_the_loss_scale():
    """Under fp16 the tensor hooks see backward's gradients times the scaler's scale."""
    model = DigitsModel().eval()  # no dropout: both passes give the same gradient
    data = torch.rand(4, 1, 8, 8)
    watch = Watch(model, {"grad_stats": ["fc2.weight"]})
    watch.attach()
    watch.recording = True
    model(data).sum().backward()
    plain = watch.scalars()["watch/gradients/fc2.weight/norm"]
    watch.gradient_scale = 1024.0
    (model(data).sum() * 1024.0).backward()
    assert watch.scalars()["watch/gradients/fc2.weight/norm"] == pytest.approx(plain, rel=1e-5)
    watch.detach()
