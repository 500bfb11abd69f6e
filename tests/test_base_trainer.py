import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from base.base_trainer import BaseTrainer
from base.settings import Monitor, TrainerSettings
from parse_config import ConfigParser
from tests.conftest import small_config
from trainer.trainer import Trainer
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError


class ScriptedTrainer(Trainer):
    """Each epoch 'validates' to the next value of a script; records which epochs ran."""

    def __init__(self, config, val_losses, lr_scheduler=None, optimizer=None):
        model = nn.Linear(2, 1)  # the optimizer given steps parameters of its own
        optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
        data = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1)), batch_size=2)
        super().__init__(model, nn.functional.mse_loss, [], optimizer, config,
                         torch.device("cpu"), data, data, lr_scheduler=lr_scheduler)
        self.val_losses = list(val_losses)
        self.epochs_run = []

    def _train_epoch(self, epoch):
        self.epochs_run.append(epoch)
        self.global_step += 1
        return {"loss": 1.0, "val_loss": self.val_losses[epoch - 1]}


def make(tmp_path, val_losses, **trainer_settings):
    config = ConfigParser(small_config(tmp_path, **trainer_settings), run_id="r")
    config.make_run_dirs()
    return ScriptedTrainer(config, val_losses)


def saved_epochs(trainer, name):
    return load_checkpoint(trainer.checkpoint_dir / name)["epoch"]


def test_model_best_is_written_on_every_improving_epoch_whatever_save_period(tmp_path):
    trainer = make(tmp_path, [5, 4, 3, 3.5, 2, 9], epochs=6, save_period=4, monitor="min val_loss")
    best_epochs = []
    original = trainer.checkpoints._write
    trainer.checkpoints._write = lambda content, path: (
        best_epochs.append(content["epoch"]) if path.name == "model_best.pth" else None,
        original(content, path))
    trainer.train()
    assert best_epochs == [1, 2, 3, 5]
    assert saved_epochs(trainer, "model_best.pth") == 5
    periodic = sorted(p.name for p in trainer.checkpoint_dir.glob("checkpoint-epoch*.pth"))
    assert periodic == ["checkpoint-epoch4.pth", "checkpoint-epoch6.pth"]  # period + last


def test_a_tie_is_not_an_improvement():
    monitor = Monitor.parse("min val_loss")
    assert monitor.improved(0.9, 1.0) and not monitor.improved(1.0, 1.0)
    assert Monitor.parse("max val_accuracy").improved(0.6, 0.5)
    assert not Monitor.parse("off").enabled


def test_early_stop_after_exactly_n_epochs_without_improvement_and_saves_that_epoch(tmp_path):
    trainer = make(tmp_path, [3, 2, 2, 2.5, 2.1, 1, 1, 1], epochs=8, save_period=100,
                   monitor="min val_loss", early_stop=3)
    trainer.train()
    assert trainer.epochs_run == [1, 2, 3, 4, 5]          # 3, 4, 5 did not improve on epoch 2
    assert (trainer.checkpoint_dir / "checkpoint-epoch5.pth").is_file()
    assert load_checkpoint(trainer.checkpoint_dir / "checkpoint-epoch5.pth")["not_improved_count"] == 3


def test_patience_running_out_at_the_last_epoch_is_the_natural_end_not_an_early_stop(
        tmp_path, caplog):
    trainer = make(tmp_path, [3, 2, 2.5, 2.4, 2.2], epochs=5, monitor="min val_loss",
                   early_stop=3)
    trainer.train()
    assert trainer.epochs_run == [1, 2, 3, 4, 5] and trainer.stop_reason is None
    assert "Stopped after epoch" not in caplog.text and "Finished training" in caplog.text
    assert load_checkpoint(trainer.checkpoint_dir / "checkpoint-epoch5.pth")["stop_reason"] is None


def test_early_stop_zero_never_stops(tmp_path):
    trainer = make(tmp_path, [1, 2, 3, 4], epochs=4, monitor="min val_loss", early_stop=0)
    trainer.train()
    assert trainer.epochs_run == [1, 2, 3, 4]


def test_monitor_max_and_off(tmp_path):
    trainer = make(tmp_path / "a", [1, 3, 2], epochs=3, monitor="max val_loss")
    trainer.train()
    assert trainer.best.value == 3 and saved_epochs(trainer, "model_best.pth") == 2
    off = make(tmp_path / "b", [1, 3, 2], epochs=3, monitor="off")
    off.train()
    assert not (off.checkpoint_dir / "model_best.pth").exists()


def test_reduce_lr_on_plateau_receives_the_monitored_metric(tmp_path):
    config = ConfigParser(small_config(tmp_path, epochs=4, monitor="min val_loss"), run_id="r")
    config.make_run_dirs()
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    trainer = ScriptedTrainer(config, [1.0, 2.0, 0.5, 0.7], scheduler, optimizer)
    trainer.train()
    assert optimizer.param_groups[0]["lr"] == 0.25   # halved after epochs 2 and 4


def test_a_missing_step_fails_at_construction(tmp_path):
    class Incomplete(BaseTrainer):
        pass

    with pytest.raises(TypeError, match="training_step"):
        Incomplete(nn.Linear(1, 1), None, [], None, ConfigParser(small_config(tmp_path)),
                   torch.device("cpu"), DataLoader(TensorDataset(torch.zeros(2, 1))))


def test_monitor_of_a_value_never_logged_is_a_config_error(tmp_path):
    trainer = make(tmp_path, [1], epochs=1, monitor="max val_acc")
    with pytest.raises(ConfigError, match=r"^trainer\.monitor: 'val_acc' is not a logged value"):
        trainer.check_monitor()


@pytest.mark.parametrize("settings, message", [
    ({"monitor": "minimum val_loss"}, r"^trainer\.monitor: expected"),
    ({"epochs": 0}, r"^trainer\.epochs: expected an integer >= 1, got 0"),
    ({"epochs": "2"}, r"^trainer\.epochs: expected an integer >= 1, got \"2\""),
    ({"epochs": 2.5}, r"^trainer\.epochs: expected an integer"),
    ({"save_period": 0}, r"^trainer\.save_period: expected an integer >= 1"),
    ({"early_stop": -1}, r"^trainer\.early_stop: expected an integer >= 0"),
    ({"tensorboard": "yes"}, r"^trainer\.tensorboard: expected true or false"),
    ({"verbosity": 3}, r"^trainer\.verbosity: expected an integer from 0 to 2, got 3"),
])
def test_trainer_section_mistakes_are_config_errors(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, [1], **settings)


def test_an_unknown_or_bad_trainer_key_is_a_config_problem(tmp_path):
    assert TrainerSettings.problems({"epochs": 1, "save_dir": "s", "epoch": 3}) == [
        "trainer.epoch: unknown key (did you mean 'epochs'?)"]
    assert TrainerSettings.problems({"epochs": 1, "save_dir": "s", "log_step": 0}) == [
        "trainer.log_step: expected an integer >= 1, got 0"]
    with pytest.raises(ConfigError, match="trainer.log_step: expected an integer >= 1"):
        make(tmp_path, [1], log_step=0)


def test_save_dir_must_be_a_string():
    with pytest.raises(ConfigError, match=r"^trainer\.save_dir: expected a string, got null"):
        TrainerSettings.from_config({"epochs": 1, "save_dir": None})


def test_nothing_to_train_when_checkpoint_is_at_the_last_epoch(tmp_path, caplog):
    trainer = make(tmp_path, [1, 1], epochs=2)
    trainer.start_epoch = 3
    trainer.train()
    assert trainer.epochs_run == [] and "Nothing to train" in caplog.text
