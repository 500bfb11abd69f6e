"""search/trial.py: a train.py run as one trial of an Optuna study."""
import json
import sys

import optuna
import pytest

from search.cross_validation import checkpoint_result
from search.trial import PRUNED_REASON, StudyTrial, open_storage, parse_trial
from tests.test_checkpoint import minimal_checkpoint
from utils.checkpoint import save_checkpoint
from utils.errors import UserError


def a_trial(tmp_path) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    number = study.ask().number
    return {"storage": url, "study": "s", "number": number, "pruner": "median",
            "prune_after": 1}


def a_trial_behind_a_better_one(tmp_path) -> dict:
    """A running trial's spec in a study where a finished trial was far better at steps 1-4:
    the median pruner stops the new one at its first report it is asked about."""
    spec = a_trial(tmp_path)
    study = optuna.load_study(study_name="s", storage=open_storage(spec["storage"]))
    study.tell(spec["number"], state=optuna.trial.TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(
        value=0.0, intermediate_values={step: 0.0 for step in range(1, 5)}))
    return {**spec, "number": study.ask().number}


def state_of(spec) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name="s", storage=open_storage(spec["storage"]))
    return study.get_trials()[spec["number"]]


@pytest.mark.slow
def test_the_outcome_is_the_mean_of_the_runs_or_pruned(tmp_path):
    spec = a_trial(tmp_path)
    StudyTrial(spec).finish([{"best": 0.5, "stop_reason": None},
                                            {"best": 0.25, "stop_reason": None}])
    assert state_of(spec).value == pytest.approx(0.375)
    spec = {**spec, "number": optuna.load_study(
        study_name="s", storage=open_storage(spec["storage"])).ask().number}
    StudyTrial(spec).finish([{"best": 0.5, "stop_reason": PRUNED_REASON}])
    assert state_of(spec).state == optuna.trial.TrialState.PRUNED


@pytest.mark.parametrize("stop_reason, state", [
    (None, optuna.trial.TrialState.COMPLETE),
    (f"{PRUNED_REASON} at epoch 2", optuna.trial.TrialState.PRUNED)])
def test_a_trial_resumed_at_its_end_tells_its_checkpoints_outcome(tmp_path, stop_reason, state):
    """Stopped after its last epoch but before it told the study: the resumed run has
    nothing to train, and the checkpoint says how the trial ended."""
    from model.model import DigitsModel

    spec = a_trial(tmp_path)
    path = tmp_path / "checkpoint-epoch3.pth"
    save_checkpoint({**minimal_checkpoint(DigitsModel()), "epoch": 3, "monitor_best": 0.125,
                     "stop_reason": stop_reason}, path)
    StudyTrial(spec).finish([checkpoint_result(path)])
    trial = state_of(spec)
    assert trial.state == state
    assert state != optuna.trial.TrialState.COMPLETE or trial.value == 0.125


class FakeTrainer:
    """What StudyTrial reads of a trainer: its monitor, its epochs, and request_stop."""

    def __init__(self, epochs: int):
        self.monitor = type("Monitor", (), {"metric": "val_loss"})()
        self.settings = type("Settings", (), {"epochs": epochs})()
        self.stop_reason = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason


@pytest.mark.parametrize("fold, folds, epoch, pruned", [
    (0, 1, 1, True),    # an epoch before the last: worse than the median, stopped
    (0, 1, 2, False),   # the last epoch: stopping saves nothing, the trial completes
    (0, 2, 2, True),    # the last epoch of a fold before the last: the later folds are saved
    (1, 2, 2, False)])  # the last epoch of the last fold
def test_the_pruner_is_asked_at_every_epoch_but_the_trials_last(tmp_path, fold, folds, epoch,
                                                                 pruned):
    spec = a_trial_behind_a_better_one(tmp_path)
    trial, trainer = StudyTrial(spec), FakeTrainer(epochs=2)
    trial.next_fold(fold, folds)
    trial.on_epoch_end(trainer, epoch, {"val_loss": 1.0})
    assert state_of(spec).intermediate_values == {fold * 2 + epoch: 1.0}
    assert (trainer.stop_reason is not None) == pruned
    assert not pruned or trainer.stop_reason == f"{PRUNED_REASON} at epoch {epoch} (val_loss 1)"


def test_a_bad_trial_spec_or_storage_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--trial: not JSON"):
        parse_trial("{")
    with pytest.raises(UserError, match=r'--trial: expected \{"storage"'):
        parse_trial(json.dumps({"study": "s"}))
    assert _storage_error("nosuchdb://ann:secret@host/db") == (
        "--storage nosuchdb://ann@host/db: SQLAlchemy knows no database nosuchdb://")
    assert _storage_error("postgres://ann@host/db") == (
        "--storage postgres://ann@host/db: SQLAlchemy knows no database postgres:// (did you "
        "mean postgresql+psycopg://?)")
    assert _storage_error("not a url") == (
        "--storage not a url: not a database URL (expected e.g. "
        "postgresql+psycopg://user@host/database or sqlite:///path/study.db)")


def test_a_storage_url_whose_driver_is_missing_names_the_package_to_install(monkeypatch):
    """SQLAlchemy 2.1 opens postgresql:// with psycopg 3, 2.0 with psycopg2: whichever it
    wants and is missing is named with its pip package — no connection is tried."""
    import sqlalchemy

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # not importable, as on a fresh machine
    monkeypatch.setitem(sys.modules, "psycopg", None)
    message = _storage_error("postgresql+psycopg2://ann:secret@db.lan/studies")
    assert message == (
        f"--storage postgresql+psycopg2://ann@db.lan/studies: postgresql+psycopg2:// needs the "
        f"database driver 'psycopg2', which is not installed (SQLAlchemy {sqlalchemy.__version__} "
        f"opens postgresql with it): pip install \"psycopg2-binary\", or name a driver you have "
        f"in the URL, e.g. postgresql+psycopg://")
    assert 'pip install "psycopg[binary]"' in _storage_error(
        "postgresql+psycopg://ann@db.lan/studies")


def _storage_error(url: str) -> str:
    with pytest.raises(UserError) as raised:
        open_storage(url)
    return str(raised.value)



@pytest.mark.slow
def test_a_users_subclassed_step_is_reported_and_pruned_like_the_default(tmp_path):
    """The VAE example (its own training_step and loss parts) as a trial (`train.py
    --trial`, in-process): its monitored value reaches the study, the pruner stops it after
    epoch 1 with the checkpoint saying so, and the study is told it was pruned."""
    import train
    example_config = pytest.importorskip("tests.examples.test_examples").example_config
    from utils.checkpoint import load_checkpoint

    spec = a_trial_behind_a_better_one(tmp_path)
    train.main(["-c", str(example_config(tmp_path, "vae", epochs=3)), "--run-id", "t",
                "--trial", json.dumps(spec)])
    trial = state_of(spec)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # reported once, then pruned
    run = tmp_path / "saved/models/Digits_VAE/t"
    assert load_checkpoint(run / "checkpoint-epoch1.pth")["stop_reason"].startswith(
        f"{PRUNED_REASON} at epoch 1 (val_loss ")
    assert not (run / "checkpoint-epoch2.pth").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sessions"][0]["trial"] == {"study": "s", "number": spec["number"],
                                                "sweep": None}
    assert spec["storage"] not in json.dumps(manifest)  # a URL may hold a password


@pytest.mark.slow
def test_a_k_fold_trial_is_pruned_at_an_earlier_folds_last_epoch(tmp_path):
    """`train.py --folds 2 --trial` (in-process, 1 epoch a fold): fold 1's only epoch is not
    the trial's last, so the pruner stops the trial there and fold 2 never trains."""
    import train
    from tests.conftest import small_config

    spec = a_trial_behind_a_better_one(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))
    train.main(["-c", str(tmp_path / "config.json"), "--folds", "2", "--run-id", "cv",
                "--trial", json.dumps(spec)])
    trial = state_of(spec)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    runs = tmp_path / "saved/models/Digits_CNN"
    assert sorted(path.name for path in runs.glob("cv*")) == ["cv-fold1", "cv-folds.json"]
    assert json.loads((runs / "cv-folds.json").read_text())["status"] == "pruned"


def test_a_damaged_sqlite_study_is_named_by_its_file_not_blamed_on_storage(tmp_path):
    from search.trial import open_storage

    database = tmp_path / "study.db"
    database.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match=rf"^{database}: cannot open the study's database"):
        open_storage(f"sqlite:///{database}")


@pytest.mark.slow
def test_an_interrupted_k_fold_trial_goes_on_from_its_folds_record(tmp_path, monkeypatch):
    """A k-fold trial stopped in fold 2: the sweep resumes it with `-r <trial>-folds.json`
    (not a failed trial, as before), which finishes fold 2 and tells the study the mean."""
    import signal
    import subprocess

    import train
    from search.study import Sweep
    from tests.conftest import small_config
    from trainer.trainer import Callback
    from utils.interrupts import TrainingInterrupted

    class SignalInFold2(Callback):
        def on_step_end(self, trainer):
            if trainer.config["data_loader"]["args"]["validation_split"]["fold"] == 2:
                trainer.stop_signals.received = signal.SIGTERM

    spec = {**a_trial(tmp_path), "pruner": "none"}
    (tmp_path / "config.json").write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))
    with pytest.raises(TrainingInterrupted):
        train.main(["-c", str(tmp_path / "config.json"), "--folds", "2", "--run-id",
                    "trial-0000", "--trial", json.dumps(spec)], callbacks=[SignalInFold2()])
    assert state_of(spec).state == optuna.trial.TrialState.RUNNING
    runs = tmp_path / "saved/models/Digits_CNN"
    record = runs / "trial-0000-folds.json"

    started = []
    (tmp_path / "trials").mkdir()
    sweep_of = Sweep(tmp_path, {"config": {"name": "Digits_CNN"}, "folds": 2}, spec["storage"],
                     "s", {"pruner": "none", "prune_after": 0, "jobs": 1}, lambda values: {})
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command)
                      or type("Process", (), {"pid": 1, "poll": lambda self: None})())
        patch.setattr(sweep_of, "run_folder", lambda name: runs / name)
        patch.setattr(sweep_of, "_is_own_trial", lambda folder, number: True)
        patch.setattr(sweep_of, "_claim", lambda *args: None)
        patch.setattr(sweep_of, "_params_text", lambda *args: "")
        patch.setattr(sweep_of, "_lost_run", lambda *args: None)  # not a lost trial's re-run
        sweep_of._start(None, 0, resume=True)
    assert started[0][started[0].index("-r") + 1] == str(record)

    train.main(["-r", str(record), "--trial", json.dumps(spec)])
    summary = json.loads(record.read_text())
    assert summary["status"] == "complete"
    trial = state_of(spec)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == pytest.approx(summary["mean"]["val_loss"])


def test_a_sqlite_file_of_someone_elses_gets_no_optuna_tables(tmp_path):
    import sqlite3

    database = tmp_path / "inventory.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE parts (id INTEGER, name TEXT)")
    connection.close()
    before = database.read_bytes()
    with pytest.raises(UserError, match=rf"^{database}: a SQLite database that is not an Optuna "
                                        rf"study's \(its tables: parts\); nothing was added"):
        open_storage(f"sqlite:///{database}")
    assert database.read_bytes() == before
    spec = a_trial(tmp_path)  # a study's own file opens again
    assert open_storage(spec["storage"]) is not None
