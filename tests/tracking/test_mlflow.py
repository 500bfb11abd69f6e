"""`trainer.mlflow`: a run tracked in a real MLflow store (SQLite): the config as params, each
epoch's values as metrics, the model and test.py's report as artifacts; a run stopped and
resumed is one MLflow run; bad settings are one line."""
import json
import signal
import socket
import time
from pathlib import Path

import pytest

import test as test_script
import train
from tests.conftest import run_main, small_config
from tests.user_steps import register_parts_step
from trainer.trainer import Callback
from utils.interrupts import TrainingInterrupted

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional dependency (pip install mlflow)")


def tracked_config(tmp_path: Path, **trainer) -> dict:
    store = tmp_path / "tracking"
    store.mkdir(exist_ok=True)
    return small_config(tmp_path / "saved", mlflow={
        "tracking_uri": f"sqlite:///{store / 'mlflow.db'}"}, **trainer)


def client_of(config: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=config["trainer"]["mlflow"]["tracking_uri"])


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((point.step, point.value) for point in client.get_metric_history(run_id, key))


class StopAt(Callback):
    """Stops the run after optimizer step `step` (a SIGTERM's way); keeps each epoch's values."""

    def __init__(self, step: int):
        self.step, self.logs = step, {}

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            trainer.stop_signals.received = signal.SIGTERM

    def on_epoch_end(self, trainer, epoch, log):
        self.logs[epoch] = dict(log)


@pytest.mark.slow
def test_a_stopped_and_resumed_run_is_one_mlflow_run_with_every_epoch_once(tmp_path,
                                                                          monkeypatch):
    register_parts_step(monkeypatch)  # a user's own step: its loss part is logged too
    config = tracked_config(tmp_path, type="PartsStep", monitor="min val_loss")
    path = write(tmp_path, config)
    recorder = StopAt(30)
    with pytest.raises(TrainingInterrupted):  # in epoch 2, after its 9th step
        train.main(["-c", str(path), "--run-id", "r"], callbacks=[recorder])
    client = client_of(config)
    (experiment,) = [each for each in client.search_experiments()
                     if each.name == "Digits_CNN"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED"
    folder = tmp_path / "saved" / "models" / "Digits_CNN" / "r"
    train.main(["-r", str(folder / "checkpoint-interrupted.pth")], callbacks=[recorder])
    runs = client.search_runs([experiment.experiment_id])
    assert [each.info.run_id for each in runs] == [run.info.run_id]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    # each epoch's values once, at its epoch, as the run logged them (the step's penalty too)
    assert sorted(recorder.logs) == [1, 2, 3] and "penalty" in recorder.logs[1]
    for key in recorder.logs[1]:
        assert history(client, run.info.run_id, key) == \
            [(epoch, pytest.approx(log[key])) for epoch, log in recorder.logs.items()]
    assert [step for step, _ in history(client, run.info.run_id, "lr")] == [1, 2, 3]
    # the effective config as params, the run's folder, the manifest's record of both sessions
    assert run.data.params["optimizer.args.lr"] == "0.001"
    assert run.data.params["trainer.type"] == "PartsStep"
    assert run.data.tags["run_dir"] == str(folder.resolve())
    sessions = json.loads((folder / "manifest.json").read_text())["sessions"]
    assert [session["mlflow"]["run_id"] for session in sessions] == [run.info.run_id] * 2
    # the model as an artifact, byte for byte; the artifacts beside the database
    artifact = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="checkpoints/model_best.pth",
        tracking_uri=config["trainer"]["mlflow"]["tracking_uri"], dst_path=str(tmp_path / "d")))
    assert artifact.read_bytes() == (folder / "model_best.pth").read_bytes()
    assert (tmp_path / "tracking" / "mlartifacts").is_dir()
    # test.py adds its values and report to the same run
    results = test_script.main(["-r", str(folder / "model_best.pth")])
    run = client.get_run(run.info.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(results["accuracy"])
    assert "test/model_best.test.json" in [
        each.path for each in client.list_artifacts(run.info.run_id, "test")]


@pytest.mark.slow
def test_mlflow_settings_are_checked_and_a_store_that_cannot_open_writes_nothing(tmp_path):
    config = small_config(tmp_path / "saved", mlflow={"tracking_uri": 3, "experimnt": "x"})
    result = run_main("train.py", "-c", str(write(tmp_path, config)), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.mlflow.tracking_uri: expected a string, got 3" in result.stderr
    assert "trainer.mlflow.experimnt: unknown key (one of tracking_uri, experiment, " \
        "artifact_location, log_checkpoint) (did you mean 'experiment'?)" in result.stderr
    (tmp_path / "a_file").write_text("")  # a database inside a file cannot be made
    config["trainer"]["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/a_file/m.db"}
    result = run_main("train.py", "-c", str(write(tmp_path, config)), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert line.startswith(f"error: trainer.mlflow.tracking_uri: cannot open the tracking store "
                           f"sqlite:///{tmp_path}/a_file/m.db (sqlite:///path/to/mlflow.db, "
                           f"http://host:5000, or a database URL): FileExistsError")
    assert not (tmp_path / "saved").exists()
    # a tracking server that does not answer: one line in seconds (MLflow alone retries for
    # minutes), nothing written
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config["trainer"]["mlflow"] = {"tracking_uri": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    result = run_main("train.py", "-c", str(write(tmp_path, config)), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot open the tracking store http://127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_without_a_tracking_uri_the_store_is_in_the_save_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = small_config(tmp_path / "saved", epochs=1, mlflow={})
    monkeypatch.chdir(tmp_path)  # where MLflow would put mlflow.db and mlruns/ by itself
    train.main(["-c", str(write(tmp_path, config)), "--run-id", "r"])
    client = client_of({"trainer": {"mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path / 'saved' / 'mlflow.db'}"}}})
    (experiment,) = [each for each in client.search_experiments() if each.name == "Digits_CNN"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "saved"]
    assert (tmp_path / "saved" / "mlartifacts").is_dir()


@pytest.mark.slow
def test_a_store_that_fails_during_training_costs_one_warning_and_training_goes_on(
        tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), **kwargs):
        if any(metric.step >= 2 for metric in metrics):
            raise ConnectionError("the server went away")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    config = tracked_config(tmp_path)
    train.main(["-c", str(write(tmp_path, config)), "--run-id", "r"])
    output = "".join(capsys.readouterr())
    assert output.count("Warning: MLflow: epoch 2's values not logged (ConnectionError: the "
                        "server went away); the rest of this session is not sent") == 1
    assert (tmp_path / "saved" / "models" / "Digits_CNN" / "r" / "checkpoint-epoch3.pth").exists()
    client = client_of(config)
    (run,) = client.search_runs([client.get_experiment_by_name("Digits_CNN").experiment_id])
    assert [step for step, _ in history(client, run.info.run_id, "loss")] == [1]


def test_without_mlflow_installed_the_config_is_refused_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    from tracking import mlflow_run
    from utils.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(mlflow_run, "find_spec",
                        lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(UserError, match=r"^trainer.mlflow: needs the package mlflow, which is "
                                        r"not installed: pip install mlflow"):
        train.main(["-c", str(write(tmp_path, tracked_config(tmp_path)))])
    assert not (tmp_path / "saved").exists()
