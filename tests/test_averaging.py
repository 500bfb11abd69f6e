"""`trainer.ema` and `trainer.swa`: the averaged weights are what the run validates and saves,
they are the average the options describe, and a run stopped mid-epoch continues them exactly;
with a user's own step and dict batches."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import train
from base import BaseDataLoader
from data_loader.datasets import digits_dataset
from tests.conftest import run_main, small_config, straight_and_resumed
from tests.user_steps import register_parts_step
from trainer.trainer import Callback
from utils.checkpoint import load_checkpoint


class Recorder(Callback):
    """The training weights after every optimizer step and at every epoch's end, and the rate
    each step ran with."""

    def __init__(self):
        self.steps, self.epochs, self.rates = [], {}, []

    def on_step_start(self, trainer):
        self.rates.append((trainer.epoch, trainer.optimizer.param_groups[0]["lr"]))

    def on_step_end(self, trainer):
        self.steps.append(weights(trainer.model))

    def on_train_epoch_end(self, trainer, epoch):
        self.epochs[epoch] = weights(trainer.model)


def weights(model: nn.Module) -> dict:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def run_folder(config: dict, run_id: str = "run"):
    return Path(config["trainer"]["save_dir"]) / "models" / config["name"] / run_id


def trained(tmp_path, config: dict) -> tuple[Recorder, dict]:
    """`config` trained in this process with a `Recorder`; the recorder and the last checkpoint."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    recorder = Recorder()
    train.main(["-c", str(path), "--run-id", "run"], callbacks=[recorder])
    folder = run_folder(config)
    return recorder, load_checkpoint(folder / f"checkpoint-epoch{config['trainer']['epochs']}.pth")


@pytest.mark.slow
def test_ema_is_the_decayed_mean_of_the_weights_and_the_model_validated_and_saved(
        tmp_path, monkeypatch):
    register_parts_step(monkeypatch)  # a user's own step: its loss has a part of its own
    config = small_config(tmp_path / "saved", ema={"decay": 0.9, "every": 2},
                          monitor="min val_loss", type="PartsStep")
    recorder, last = trained(tmp_path, config)
    # by hand: every 2nd step's weights, decay min(0.9, (1 + n) / (10 + n)) at update n
    average = None
    for n, step in enumerate(recorder.steps[1::2]):
        if average is None:
            average = {name: value.clone() for name, value in step.items()}
            continue
        decay = min(0.9, (1 + n) / (10 + n))
        for name, value in step.items():
            average[name] = torch.lerp(average[name], value, 1 - decay)
    torch.testing.assert_close(last["state_dict"], average, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last["averaging"]["training_state_dict"], recorder.steps[-1],
                               rtol=0, atol=0)
    assert last["averaging"]["updates"] == len(recorder.steps) // 2
    # the best epoch's value is the averaged model's validation loss
    best = load_checkpoint(run_folder(config) / "model_best.pth")
    trainer = train.build_trainer(train_config(config))
    trainer.model.load_state_dict(best["state_dict"])
    assert trainer.evaluate(trainer.valid_data_loader)["loss"] == \
        pytest.approx(best["monitor_best"], rel=1e-6)


def train_config(config: dict):
    from parse_config import ConfigParser

    parsed = ConfigParser(config)
    parsed.validate(train.blocks())
    return parsed


class DigitsAsDicts(Dataset):
    """The digits as dicts `{"image", "features", "label"}` (features: the image's first
    row): a user's own batch structure, for a model with two inputs."""

    def __init__(self, data_dir: str, training: bool):
        self.images, self.targets = digits_dataset(data_dir, training).tensors

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        return {"image": image, "features": image[0, 0, :4], "label": self.targets[index]}


class DictDigitsLoader(BaseDataLoader):
    def __init__(self, data_dir, batch_size, shuffle=True, validation_split=0.0, num_workers=0,
                 training=True, seed=0):
        super().__init__(DigitsAsDicts(data_dir, training), batch_size, shuffle,
                         validation_split, num_workers, seed=seed)


class BatchNormDictModel(nn.Module):
    """Two inputs by name, and BatchNorm: what SWA's statistics pass is for."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 16 + 4, 10)

    def forward(self, image, features):
        pictures = nn.functional.max_pool2d(torch.relu(self.norm(self.conv(image))), 2)
        return torch.log_softmax(self.head(torch.cat([pictures.flatten(1), features], 1)), 1)


def dict_batches_config(tmp_path, monkeypatch, **trainer) -> dict:
    """The shrunk real config on dict batches and a BatchNorm model with two inputs, as if
    written in data_loader/ and model/; 4 epochs."""
    import data_loader.data_loaders
    import model.model

    for module, user_class in ((data_loader.data_loaders, DictDigitsLoader),
                               (model.model, BatchNormDictModel)):
        user_class.__module__ = module.__name__
        monkeypatch.setattr(module, user_class.__name__, user_class, raising=False)
    config = small_config(tmp_path / "saved", **{"epochs": 4, **trainer})
    config["arch"] = {"type": "BatchNormDictModel", "args": {}}
    config["data_loader"]["type"] = "DictDigitsLoader"
    config["metrics"] = ["accuracy"]
    return config


def test_swa_averages_epoch_ends_anneals_the_rate_and_recomputes_batch_norm_on_dict_batches(
        tmp_path, monkeypatch):
    config = dict_batches_config(tmp_path, monkeypatch,
                                 swa={"start_epoch": 2, "lr": 0.0005, "anneal_epochs": 2})
    recorder, last = trained(tmp_path, config)
    ends = [recorder.epochs[epoch] for epoch in (2, 3, 4)]
    averaged = last["state_dict"]
    for name, value in averaged.items():
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(value, sum(end[name] for end in ends) / 3)
    # the rate: the group's rate when averaging began to 0.0005 over 2 epochs (cosine)
    first = [rate for epoch, rate in recorder.rates if epoch == 1][-1]
    for epoch, rate in recorder.rates:
        if epoch >= 2:
            weight = (1 - math.cos(math.pi * min(1, (epoch - 1) / 2))) / 2
            assert rate == pytest.approx(weight * 0.0005 + (1 - weight) * first, rel=1e-9)
    # BatchNorm's statistics: one pass of the training data through the averaged weights
    trainer = train.build_trainer(train_config(config))
    model = trainer.model
    model.load_state_dict(averaged)
    model.norm.reset_running_stats()
    model.norm.momentum = None
    model.train()
    trainer.data_loader.set_epoch(4)  # the last epoch's batches (a batch's variance depends on them)
    with torch.no_grad():
        for batch in trainer.data_loader:
            model(image=batch["image"], features=batch["features"])
    torch.testing.assert_close(averaged["norm.running_mean"], model.norm.running_mean)
    torch.testing.assert_close(averaged["norm.running_var"], model.norm.running_var)
    assert not torch.equal(averaged["norm.running_mean"], ends[-1]["norm.running_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [{"ema": {"decay": 0.95}},
                                       {"swa": {"start_epoch": 2, "lr": 0.001}}],
                         ids=["ema", "swa"])
def test_a_run_stopped_mid_epoch_continues_its_average_exactly(tmp_path, monkeypatch,
                                                                averaging):
    config = dict_batches_config(tmp_path, monkeypatch, epochs=3, **averaging)
    whole, cut = straight_and_resumed(tmp_path, config, stop_after_step=27)  # epoch 2, step 6
    torch.testing.assert_close(cut["state_dict"], whole["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(cut["averaging"].pop("training_state_dict"),
                               whole["averaging"].pop("training_state_dict"), rtol=0, atol=0)
    assert cut["averaging"] == whole["averaging"]
    assert whole["averaging"]["updates"] == (63 if "ema" in averaging else 2)
    assert cut["monitor_best"] == whole["monitor_best"]


def test_averaging_options_are_checked_up_front(tmp_path):
    config = small_config(tmp_path / "saved", epochs=5, ema={"decay": 1.5, "evry": 2},
                          swa={"lr": 0.01, "start_epoch": 9})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = run_main("train.py", "-c", str(path), check=False)
    assert result.returncode == 2
    for line in ("trainer.ema.decay: expected a number between 0 and 1, got 1.5",
                 "trainer.ema.evry: unknown key (one of decay, warmup, every) (did you mean "
                 "'every'?)",
                 "trainer.ema, trainer.swa: one kind of averaged weights at a time",
                 "trainer.swa.start_epoch: 9 is after the run's last epoch (trainer.epochs 5)"):
        assert line in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "saved").exists()
    # seen once the run is built: an update interval longer than the run
    config["trainer"].update(ema={"every": 200}, swa=None)
    path.write_text(json.dumps(config))
    result = run_main("train.py", "-c", str(path), check=False)
    assert result.returncode == 2
    assert "error: trainer.ema.every: 200 is more than the run's 105 optimizer steps (5 epochs of " \
        "21): nothing would be averaged" in result.stderr
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_a_resume_without_averaging_goes_on_from_the_training_weights(tmp_path, capsys):
    config = small_config(tmp_path / "saved", epochs=2, ema={"decay": 0.9})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", "run"])
    checkpoint_path = run_folder(config) / "checkpoint-epoch2.pth"
    checkpoint = load_checkpoint(checkpoint_path)
    resumed = train.prepare(train_resume_config(checkpoint_path, epochs=3, ema=None), None)
    torch.testing.assert_close(resumed.model.state_dict(),
                               checkpoint["averaging"]["training_state_dict"], rtol=0, atol=0)
    assert "averaged its weights (trainer.ema) and this run does not: training goes on from " \
        "its training weights" in "".join(capsys.readouterr())


def train_resume_config(path, **trainer):
    from tests.conftest import from_command_line

    overrides = [f"trainer.{key}={json.dumps(value)}" for key, value in trainer.items()]
    return from_command_line(["-r", str(path), *[part for override in overrides
                                                 for part in ("-o", override)]],
                             train.OPTIONS)
