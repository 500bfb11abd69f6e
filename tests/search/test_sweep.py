"""sweep.py: hyperparameter search on Optuna — trials as real runs, pruning, a shared SQLite
study worked on by two trial processes at once, stop and go on, best_config.json."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

import sweep
from tests.conftest import ROOT, small_config
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

STUDY = "Digits_CNN-space"
# with --sampler random --seed 2, trials 0, 1, 3, 4 get the good rate and 2 the tiny one
SPACE = {"optimizer.args.lr": {"choice": [0.01, 0.00001]},
         "arch.args.dropout": {"choice": [0.0, 0.25]}}


def write_inputs(tmp_path, epochs: int, space=None):
    config = small_config(tmp_path / "saved", epochs=epochs)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "space.json").write_text(json.dumps(space or SPACE))
    return ["-c", str(tmp_path / "config.json"), "-s", str(tmp_path / "space.json")]


def sweep_command(arguments):
    return [sys.executable, str(ROOT / "sweep.py"), *arguments]


def load_study(folder):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")


def test_a_bad_search_space_is_one_line_per_problem_and_writes_nothing(tmp_path, capsys):
    arguments = write_inputs(tmp_path, 1, {
        "optimizer.args.lr": {"float": [0.1, 0.001]},
        "optimiser.args.momentum": {"float": [0.1, 0.9]},
        "arch.args.dropout": {"choice": [0.1, "high"]},
        "data_loader.args.batch_size": {"int": [0, 64]}})
    with pytest.raises(UserError) as raised:
        sweep.main([*arguments, "--trials", "2"])
    space = tmp_path / "space.json"
    assert raised.value.problems[:2] == [
        f"{space}: optimizer.args.lr: float: low 0.1 must be below high 0.001",
        f"{space}: optimiser: missing from the config (did you mean 'optimizer'?)"]
    assert len(raised.value.problems) == 2  # the values are checked once the space is right
    assert not (tmp_path / "saved").exists()


def test_values_the_template_refuses_are_named_with_the_value(tmp_path):
    arguments = write_inputs(tmp_path, 1, {"arch.args.dropout": {"choice": [0.1, "high"]},
                                           "data_loader.args.batch_size": {"int": [0, 64]}})
    with pytest.raises(UserError) as raised:
        sweep.main(arguments)
    space = tmp_path / "space.json"
    assert raised.value.problems == [
        f'{space}: arch.args.dropout="high": arch.args.dropout: expected a number, got "high"',
        f"{space}: data_loader.args.batch_size=0: data_loader.args.batch_size: expected an "
        f"integer >= 1, got 0"]
    assert not (tmp_path / "saved").exists()


def test_a_key_every_value_of_which_is_refused_is_one_line_and_bad_folds_name_the_option(
        tmp_path):
    arguments = write_inputs(tmp_path, 1, {"optimizer.args.learning_rate": {
        "float": [0.0003, 0.03], "log": True}})
    with pytest.raises(UserError) as raised:
        sweep.main(arguments)
    assert raised.value.problems == [  # not one line per end of the range
        f"{tmp_path / 'space.json'}: optimizer.args.learning_rate: optimizer.args: unexpected "
        f"argument 'learning_rate' for torch.optim.Adam"]
    with pytest.raises(UserError) as raised:
        sweep.main([*write_inputs(tmp_path, 1), "--folds", "1"])
    assert raised.value.problems == ["--folds: expected K >= 2 runs, got 1"]  # as train.py's
    assert not (tmp_path / "saved").exists()


def test_a_monitor_that_is_off_cannot_be_swept(tmp_path):
    arguments = write_inputs(tmp_path, 1)
    with pytest.raises(UserError, match="trainer.monitor: is off; a sweep compares trials by it"):
        sweep.main([*arguments, "--monitor", "off"])


@pytest.mark.slow
def test_a_sweep_of_two_workers_prunes_stops_on_sigterm_goes_on_and_its_best_config_reproduces(
        tmp_path):
    """Two trial processes on one SQLite study; SIGTERM once trial 1 is under way; the same
    command again; then best_config.json trained again (one scenario: trials are processes)."""
    import train
    from search.study import has_checkpoint

    arguments = [*write_inputs(tmp_path, epochs=4), "--trials", "5", "--jobs", "2",
                 "--sampler", "random", "--seed", "2", "--prune-after", "1", "--study", STUDY]
    folder = tmp_path / "saved/sweeps" / STUDY
    first = subprocess.Popen(sweep_command(arguments), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (folder / "models/Digits_CNN/trial-0001/checkpoint-epoch1.pth").exists() and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, output
    interrupted = [trial.number for trial in load_study(folder).get_trials()
                   if trial.state.name == "RUNNING"]
    assert 1 in interrupted and "trial-0001: interrupted" in output, output
    # a trial stopped before its first checkpoint (still starting) starts again instead
    resumed = [number for number in interrupted
               if has_checkpoint(folder / "models/Digits_CNN" / f"trial-{number:04d}")]
    assert 1 in resumed

    second = subprocess.run(sweep_command(arguments), capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    for number in interrupted:
        again = "resumed from its checkpoint" if number in resumed else "started"
        assert f"trial-{number:04d}: {again} (" in second.stdout, second.stdout
    study = load_study(folder)
    trials = study.get_trials()
    assert [trial.number for trial in trials] == list(range(5))  # none lost, none twice
    states = {trial.number: trial.state.name for trial in trials}
    assert set(states.values()) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states.values()
    # the tiny rate's. Not a matter of timing (unlike 3's and 4's fate): trial 2 starts only
    # once trial 0 or 1 has finished (a stopping sweep starts nothing), and the first to finish
    # completes (nothing is pruned before a trial completed), so a good trial's epochs are in
    # the study before trial 2 reports its first
    assert states[2] == "PRUNED"
    for trial in trials:
        run = folder / "models/Digits_CNN" / f"trial-{trial.number:04d}"
        sessions = json.loads((run / "manifest.json").read_text())["sessions"]
        assert sessions[0]["trial"] == {"study": STUDY, "number": trial.number,
                                        "sweep": str(folder)}
        assert len(sessions) == (2 if trial.number in resumed else 1)  # resumed in place
        assert (folder / "log/Digits_CNN" / run.name).is_dir()
        last = max(run.glob("checkpoint-epoch*.pth"), key=lambda path: path.stat().st_mtime)
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1))  # each epoch reported once
        if trial.state.name == "PRUNED":  # stopped early, and its checkpoint says why
            assert len(steps) < 4
            assert load_checkpoint(last)["stop_reason"].startswith("pruned by the sweep's pruner")
        else:
            assert len(steps) == 4 and load_checkpoint(last)["stop_reason"] is None
    assert sorted(path.name for path in (folder / "models/Digits_CNN").iterdir()) == [
        f"trial-{number:04d}" for number in range(5)]

    best = json.loads((folder / "best_config.json").read_text())
    assert best["trainer"]["save_dir"] == str(tmp_path / "saved")
    command = json.loads((folder / "trials.json").read_text())["best"]["command"]
    share = max(1, os.cpu_count() // 2)  # 2 jobs: each trial's torch had half the cores
    assert command == f"OMP_NUM_THREADS={share} python train.py -c {folder / 'best_config.json'}"
    assert f"trains it again: {command}" in second.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(share)  # as the command says
    try:
        train.main(["-c", str(folder / "best_config.json"), "--run-id", "again"])
    finally:
        torch.set_num_threads(threads)
    again = load_checkpoint(tmp_path / "saved/models/Digits_CNN/again/model_best.pth")
    assert again["monitor_best"] == study.best_value  # exactly: the same seed and config


@pytest.mark.slow
def test_a_trial_that_crashes_is_marked_failed_with_its_error_and_the_sweep_goes_on(tmp_path):
    arguments = [*write_inputs(tmp_path, 1, {"optimizer.args.lr": {"choice": [1e12]}}),
                 "--trials", "2", "--jobs", "2", "--study", STUDY]
    result = subprocess.run(sweep_command(arguments), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr  # nothing completed
    trials = load_study(tmp_path / "saved/sweeps" / STUDY).get_trials()
    assert [trial.state.name for trial in trials] == ["FAIL", "FAIL"]  # both ran: it went on
    for trial in trials:
        assert "error: " in trial.user_attrs["error"] and "loss" in trial.user_attrs["error"]
        assert f"trial-{trial.number:04d}: failed (exit code 1: error: " in result.stdout
    assert "No trial completed" in result.stderr


def test_the_report_of_a_folder_without_a_sweep_is_one_line(tmp_path):
    with pytest.raises(UserError, match=rf"{tmp_path}/sweep.json: no such file"):
        sweep.main(["--report", str(tmp_path)])


def test_sweep_py_without_a_config_says_what_to_give(tmp_path):
    with pytest.raises(UserError, match="give the config with -c and the search space with -s"):
        sweep.main([])
    assert os.listdir(tmp_path) == []


def test_a_trials_process_is_known_by_its_pid_and_start_time():
    """A re-run sweep resumes a trial whose process is gone — also when its pid now belongs to
    another process (pids are reused): the claim records when the process started."""
    from search.study import process_alive, start_time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = start_time(child.pid)
        assert started is not None and started == start_time(child.pid)
        assert process_alive(child.pid, started) and process_alive(child.pid)
        assert not process_alive(child.pid, str(int(started) - 1))  # another process's pid
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid, started) and not process_alive(None)


def test_a_second_study_of_the_same_name_in_another_storage_is_refused_in_one_line(tmp_path):
    """The sweep folder is one study's: a second one (same --study, another --storage) would
    overwrite its trial files and take its runs for its own."""
    from search.study import load_definition
    from search.trial import storage_identity

    folder = tmp_path / "sweeps" / "s11"
    folder.mkdir(parents=True)
    first = {"config": {}, "space": {}, "storage": storage_identity(f"sqlite:///{folder}/study.db")}
    load_definition(folder, first)
    saved = (folder / "sweep.json").read_text()
    other = {**first, "storage": storage_identity(f"sqlite:///{tmp_path}/other.db")}
    with pytest.raises(UserError, match=rf"^{folder}: this sweep folder belongs to study 's11' "
                                        rf"in sqlite:///{folder}/study\.db, not in "
                                        rf"sqlite:///{tmp_path}/other\.db"):
        load_definition(folder, other)
    assert (folder / "sweep.json").read_text() == saved
    assert load_definition(folder, first) == json.loads(saved)  # the same study goes on


def test_the_storage_a_sweep_keeps_has_no_password():
    from search.trial import storage_identity

    assert storage_identity("postgresql+psycopg2://ann:secret@db.lan/studies") == \
        "postgresql+psycopg2://ann@db.lan/studies"


def test_a_trial_resumes_only_a_run_folder_its_own_study_trained(tmp_path):
    from runs.manifest import add_session
    from search.study import Sweep

    folder = tmp_path / "sweeps" / "s11"
    sweep_of = Sweep(folder, {"config": {"name": "Digits_CNN"}}, "sqlite://", "s11", {},
                     lambda values: {})
    run = sweep_of.run_folder("trial-0000")
    run.mkdir(parents=True)
    own = {"study": "s11", "number": 0, "sweep": str(folder)}
    add_session(run, tmp_path / "log", {"command": ["train.py"], "trial": {**own, "study": "s1"}})
    assert not sweep_of._is_own_trial(run, 0)  # another study's trial 0: not resumed
    add_session(run, tmp_path / "log", {"command": ["train.py"], "trial": own})
    assert sweep_of._is_own_trial(run, 0) and not sweep_of._is_own_trial(run, 1)


def test_a_report_on_a_storage_that_does_not_exist_creates_nothing(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"monitor": "min val_loss", "space": {}}))
    missing = tmp_path / "nonexistent.db"
    with pytest.raises(UserError, match=rf"^{missing}: no such study database \(--storage\); "
                                        rf"nothing was created$"):
        sweep.main(["--report", str(tmp_path), "--storage", f"sqlite:///{missing}"])
    assert not missing.exists()
