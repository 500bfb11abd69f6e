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
def test_a_repeated_k_fold_run_keeps_both_summaries_each_with_its_own_folds(config_file,
                                                                            tmp_path):
    argv = ["-c", str(config_file), "--folds", "2", "--epochs", "1", "--run-id", "cv",
            "-o", "trainer.len_epoch=2"]
    train.main(argv)
    for fold in (1, 2):  # a fold's own id is not a clash with the k-fold run's
        log = (tmp_path / f"saved/log/Digits_CNN/cv-fold{fold}/info.log").read_text()
        assert "Run folder:" in log and "is taken by an earlier run" not in log
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
    not started, the exit code says it was stopped, and the record says how to go on."""
    import signal

    from trainer.trainer import Callback
    from utils.interrupts import TrainingInterrupted

    class SignalAtTheEnd(Callback):
        def on_epoch_end(self, trainer, epoch, log):
            trainer.stop_signals.received = signal.SIGTERM

    with pytest.raises(TrainingInterrupted) as raised:
        train.main(["-c", str(config_file), "--folds", "3", "--epochs", "1", "--run-id", "cv"],
                   callbacks=[SignalAtTheEnd()])
    models = tmp_path / "saved/models/Digits_CNN"
    assert raised.value.exit_code == 143 and "after fold 1 of 3" in str(raised.value)
    assert f"python train.py -r {models / 'cv-folds.json'}" in str(raised.value)
    assert sorted(path.name for path in models.iterdir()) == \
        [".cv-folds.json.lock", "cv-fold1", "cv-folds.json"]  # the record and its lock
    record = json.loads((models / "cv-folds.json").read_text())
    assert record["status"] == "running" and record["training"] is None
    assert [Path(result["run"]).name for result in record["folds"]] == ["cv-fold1"]


@pytest.mark.slow
def test_an_interrupted_k_fold_run_goes_on_from_its_record_as_if_never_stopped(config_file,
                                                                               tmp_path):
    """SIGTERM in the middle of fold 2 of 3: `-r cv-folds.json` resumes fold 2 from its
    checkpoint, trains fold 3 and writes the summary — the same numbers as a k-fold run that
    was never stopped; a second `-r` of the complete record trains nothing."""
    import signal

    from trainer.trainer import Callback
    from utils.interrupts import TrainingInterrupted

    class SignalInFold2(Callback):
        def on_step_end(self, trainer):
            if trainer.config["data_loader"]["args"]["validation_split"]["fold"] == 2 and \
                    trainer.global_step == 3:
                trainer.stop_signals.received = signal.SIGTERM

    argv = ["-c", str(config_file), "--folds", "3", "--epochs", "2", "-o",
            "trainer.len_epoch=2"]
    train.main([*argv, "--run-id", "whole"])
    with pytest.raises(TrainingInterrupted) as raised:
        train.main([*argv, "--run-id", "cv"], callbacks=[SignalInFold2()])
    models = tmp_path / "saved/models/Digits_CNN"
    assert "(fold 2 from its checkpoint, then fold 3 and the summary): python train.py " \
        f"-r {models / 'cv-folds.json'}" in str(raised.value)
    record = json.loads((models / "cv-folds.json").read_text())
    assert record["training"] == str(models / "cv-fold2") and len(record["folds"]) == 1
    train.main(["-r", str(models / "cv-folds.json")])
    whole = json.loads((models / "whole-folds.json").read_text())
    resumed = json.loads((models / "cv-folds.json").read_text())
    assert resumed["status"] == "complete" and resumed["training"] is None
    assert [Path(result["run"]).name for result in resumed["folds"]] == \
        ["cv-fold1", "cv-fold2", "cv-fold3"]
    assert resumed["mean"] == whole["mean"] and resumed["std"] == whole["std"]
    assert sorted(path.name for path in models.glob("cv*")) == \
        ["cv-fold1", "cv-fold2", "cv-fold3", "cv-folds.json"]
    for fold in (1, 2, 3):
        assert torch.equal(
            load_checkpoint(models / f"cv-fold{fold}/checkpoint-epoch2.pth")["state_dict"][
                "fc2.weight"],
            load_checkpoint(models / f"whole-fold{fold}/checkpoint-epoch2.pth")["state_dict"][
                "fc2.weight"])
    train.main(["-r", str(models / "cv-folds.json")])  # complete: nothing to train
    assert json.loads((models / "cv-folds.json").read_text()) == resumed


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "5"], "--epochs would make its folds differ"),
    (["-o", "seed=3"], "-o would make its folds differ"),
    (["--seed", "0"], "--seed would make its folds differ"),
    (["--folds", "4"], "--folds 4: "),
])
def test_going_on_with_a_k_fold_run_as_it_started_or_one_line(tmp_path, argv, message):
    record = tmp_path / "cv-folds.json"
    record.write_text(json.dumps({"status": "running", "run_id": "cv", "k": 3,
                                  "monitor": "", "folds": [], "training": None,
                                  "config": {}}))
    with pytest.raises(UserError, match=message):
        train.main(["-r", str(record), *argv])
    record.write_text("{}")
    with pytest.raises(UserError, match="not a k-fold run's record"):
        train.main(["-r", str(record)])


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


def test_a_k_fold_run_that_another_process_goes_on_with_is_one_line(tmp_path):
    """Two `-r cv-folds.json` at once (or one while the k-fold run itself still trains): the
    second is refused under the record's lock before it reads or writes anything."""
    from runs.run_lock import RunLock

    record = tmp_path / "cv-folds.json"
    record.write_text(json.dumps({"status": "running", "run_id": "cv", "k": 2, "monitor": "",
                                  "folds": [], "training": None, "config": {}}))
    holder = RunLock(tmp_path, ".cv-folds.json.lock")
    holder.acquire()
    try:
        with pytest.raises(UserError, match=rf"^{record}: another process is going on with this "
                                            rf"k-fold run \(pid \d+ on .*\); wait for it to end$"):
            from search.cross_validation import FoldsRecord

            config = type("Config", (), {"run_id": "cv", "config": {}, "cli_args": type(
                "Args", (), {"folds": 2, "folds_record": str(record)})()})()
            FoldsRecord.of_run(config)
    finally:
        holder.release()


@pytest.mark.slow
def test_a_fold_that_had_stopped_early_is_not_trained_on_when_the_k_fold_run_goes_on(
        config_file, tmp_path):
    """Fold 2 stopped early at epoch 2 of 3, and the process died before the record said so:
    going on reads its result from the checkpoint instead of training epoch 3."""
    from utils.checkpoint import save_checkpoint

    train.main(["-c", str(config_file), "--folds", "2", "--run-id", "cv", "-o",
                "trainer.len_epoch=2"])
    models = tmp_path / "saved/models/Digits_CNN"
    record = json.loads((models / "cv-folds.json").read_text())
    (models / "cv-fold2/checkpoint-epoch3.pth").unlink()
    stopped = load_checkpoint(models / "cv-fold2/checkpoint-epoch2.pth")
    stopped["stop_reason"] = "early stop: val_loss did not improve for 1 epochs"
    save_checkpoint(stopped, models / "cv-fold2/checkpoint-epoch2.pth")
    record.update(status="running", folds=record["folds"][:1],
                  training=str(models / "cv-fold2"))
    (models / "cv-folds.json").write_text(json.dumps(record))
    train.main(["-r", str(models / "cv-folds.json")])
    assert not (models / "cv-fold2/checkpoint-epoch3.pth").exists()
    summary = json.loads((models / "cv-folds.json").read_text())
    assert summary["status"] == "complete" and summary["folds"][1]["epochs"] == 2
    assert summary["folds"][1]["stop_reason"].startswith("early stop")
