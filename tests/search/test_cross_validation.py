"""train.py --folds K and search/cross_validation.py: K runs, one fold held out each, and a
summary whose mean and std are those of the folds."""
import json
import statistics
from pathlib import Path

import pytest
import torch

import train
from base.base_data_loader import sample_count
from search.cross_validation import summarize_folds
from tests.conftest import build, run_folders
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def test_the_summary_is_the_mean_and_sample_std_of_the_folds():
    results = [{"values": {"val_loss": value, "val_accuracy": 1 - value}, "best_epoch": 1}
               for value in (0.5, 0.25, 0.75)]
    summary = summarize_folds(results, "val_loss")
    assert summary["mean"]["val_loss"] == pytest.approx(0.5)
    assert summary["std"]["val_loss"] == pytest.approx(statistics.stdev([0.5, 0.25, 0.75]))
    assert summary["mean"]["val_accuracy"] == pytest.approx(0.5)


def test_the_real_data_loaders_folds_cover_the_training_part_stratified(tmp_path):
    """The digits' training part (the test split is not the loader's data, so never in a
    fold): 3 folds, disjoint, covering it, each class in each fold in its share."""
    held_out, labels = [], None
    for fold in (1, 2, 3):
        trainer = build(tmp_path, {"data_loader.args.validation_split": {"fold": fold,
                                                                         "folds": 3}})
        loader = trainer.data_loader
        labels = loader.dataset.tensors[1]
        valid = list(trainer.valid_data_loader.epoch_sampler.indices)
        train_part = list(loader.epoch_sampler.indices)
        assert sorted(valid + train_part) == list(range(len(labels)))
        assert sample_count(loader) == len(labels) - len(valid)
        held_out.append(valid)
    assert sorted(sum(held_out, [])) == list(range(len(labels)))
    shares = torch.bincount(labels, minlength=10) / 3
    for valid in held_out:
        assert (torch.bincount(labels[valid], minlength=10) - shares).abs().max() < 1


@pytest.mark.slow
def test_train_py_folds_trains_k_runs_and_reports_their_mean_and_std(config_file, tmp_path):
    train.main(["-c", str(config_file), "--folds", "3", "--epochs", "2", "--run-id", "cv"])
    folders = [folder for folder in run_folders(tmp_path / "saved") if folder.is_dir()]
    assert [folder.name for folder in folders] == ["cv-fold1", "cv-fold2", "cv-fold3"]
    summary = json.loads((tmp_path / "saved/models/Digits_CNN/cv-folds.json").read_text())
    best = [load_checkpoint(folder / "model_best.pth") for folder in folders]
    for result, checkpoint, fold in zip(summary["folds"], best, (1, 2, 3)):
        assert checkpoint["config"]["data_loader"]["args"]["validation_split"] == \
            {"fold": fold, "folds": 3}
        assert result["best"] == checkpoint["monitor_best"]
        assert result["values"] == pytest.approx(checkpoint["best_log"])
    for key in ("val_loss", "val_accuracy", "loss"):
        values = [checkpoint["best_log"][key] for checkpoint in best]
        assert summary["mean"][key] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert summary["std"][key] == pytest.approx(statistics.stdev(values), abs=1e-12)


@pytest.mark.slow
def test_a_repeated_k_fold_run_keeps_both_summaries_each_with_its_own_folds(config_file, tmp_path,
                                                                            caplog):
    argv = ["-c", str(config_file), "--folds", "2", "--epochs", "1", "--run-id", "cv",
            "-o", "trainer.len_epoch=2"]
    train.main(argv)
    assert "is taken by an earlier run" not in caplog.text  # a fold's own id is not a clash
    train.main(argv)
    models = tmp_path / "saved/models/Digits_CNN"
    first = json.loads((models / "cv-folds.json").read_text())
    second = json.loads((models / "cv-folds_1.json").read_text())
    assert [Path(fold["run"]).name for fold in first["folds"]] == ["cv-fold1", "cv-fold2"]
    assert [Path(fold["run"]).name for fold in second["folds"]] == ["cv-fold1_1", "cv-fold2_1"]


@pytest.mark.parametrize("argv, message", [
    (["--folds", "1"], "--folds: expected K >= 2 runs, got 1"),
    (["--folds", "2", "-o", "data_loader.args.batch_size=0"],
     "data_loader.args.batch_size: expected an integer >= 1, got 0"),
])
def test_bad_folds_are_one_line_before_anything_is_written(config_file, tmp_path, argv, message):
    with pytest.raises(UserError) as raised:
        train.main(["-c", str(config_file), *argv])
    assert message in raised.value.problems
    assert not (tmp_path / "saved").exists()


def test_a_stop_signal_in_a_folds_last_epoch_stops_the_folds_after_it(config_file, tmp_path):
    """The signal comes as fold 1 ends its last epoch (its run is complete): fold 2 and 3 are
    not started, and the exit code says it was stopped."""
    import signal

    from trainer.trainer import Callback
    from utils.interrupts import TrainingInterrupted

    class SignalAtTheEnd(Callback):
        def on_epoch_end(self, trainer, epoch, log):
            trainer.stop_signals.received = signal.SIGTERM

    with pytest.raises(TrainingInterrupted) as raised:
        train.main(["-c", str(config_file), "--folds", "3", "--epochs", "1", "--run-id", "cv"],
                   callbacks=[SignalAtTheEnd()])
    assert raised.value.exit_code == 143 and "after fold 1 of 3" in str(raised.value)
    folders = sorted(path.name for path in (tmp_path / "saved/models/Digits_CNN").iterdir())
    assert folders == ["cv-fold1"]  # complete; no summary of one fold


@pytest.mark.parametrize("example", ["dict_batches", "vae"])
def test_folds_of_a_users_own_task_dict_batches_and_a_subclassed_step(tmp_path, example):
    """The dict-batch classifier (no trainer code) and the VAE (its own training_step, loss
    parts): each fold holds out its part, and the summary covers the loss parts too."""
    example_config = pytest.importorskip("tests.examples.test_examples").example_config

    train.main(["-c", str(example_config(tmp_path, example, epochs=1)), "--folds", "2",
                "--run-id", "cv"])
    name = json.loads((tmp_path / f"{example}.json").read_text())["name"]
    summary = json.loads((tmp_path / f"saved/models/{name}/cv-folds.json").read_text())
    best = [load_checkpoint(tmp_path / f"saved/models/{name}/cv-fold{fold}/model_best.pth")
            for fold in (1, 2)]
    assert [checkpoint["config"]["data_loader"]["args"]["validation_split"]["fold"]
            for checkpoint in best] == [1, 2]
    for key in best[0]["best_log"]:
        assert summary["mean"][key] == pytest.approx(
            statistics.fmean(checkpoint["best_log"][key] for checkpoint in best), abs=1e-12)
    if example == "vae":
        assert {"recon", "kl", "val_recon", "val_kl"} <= set(summary["mean"])
