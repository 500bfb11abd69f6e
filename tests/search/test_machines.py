"""sweep.py across machines: several sweeps on one study (SQLite here; PostgreSQL where a server
is reachable: SWEEP_TEST_POSTGRES, a URL of a database the test may create others beside),
a machine lost mid-trial, a result that is final only when no trial runs elsewhere, the
plots, `--enqueue` and `--timeout`. A "machine" is a sweep process with a save_dir (a clone)
and a name (`SWEEP_HOST`) of its own."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from search.trial import retry_history
from tests.conftest import ROOT, small_config
from utils.errors import UserError

STUDY = "shared"
SPACE = {"optimizer.args.lr": {"choice": [0.01, 0.003]},
         "arch.args.dropout": {"choice": [0.0, 0.25]}}
POSTGRES = os.environ.get("SWEEP_TEST_POSTGRES")


def machine(tmp_path: Path, name: str, epochs: int, save_dir: Path | None = None,
            **trainer) -> dict:
    """A machine's clone: its config and space files, its save_dir (or a shared one)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    config = small_config(save_dir or home / "saved", epochs=epochs, **trainer)
    (home / "config.json").write_text(json.dumps(config))
    (home / "space.json").write_text(json.dumps(SPACE))
    return {"home": home, "name": name,
            "folder": Path(config["trainer"]["save_dir"]) / "sweeps" / STUDY}


def sweep(box: dict, storage: str, *options: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "sweep.py"), "-c", str(box["home"] / "config.json"),
               "-s", str(box["home"] / "space.json"), "--study", STUDY, "--storage", storage,
               "--sampler", "random", "--pruner", "none", "--jobs", "1", *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "SWEEP_HOST": box["name"]},
                            cwd=box["home"])


def trials_of(storage: str) -> list:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=storage).get_trials()


def fresh_postgres_database() -> str:
    """A new database on the server SWEEP_TEST_POSTGRES names; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES)
    name = f"sweep_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                         password=url.password, dbname=url.database, autocommit=True) as server:
        server.execute(f"CREATE DATABASE {name}")
    return url.set(database=name).render_as_string(hide_password=False)


def storages() -> list:
    postgres = pytest.param("postgresql", marks=pytest.mark.skipif(
        not POSTGRES, reason="no PostgreSQL server: set SWEEP_TEST_POSTGRES to a database URL "
                             "(.ci/run starts one where the machine has PostgreSQL)"))
    return ["sqlite", postgres]


@pytest.mark.slow
@pytest.mark.parametrize("kind", storages())
def test_two_machines_starting_together_on_a_fresh_study_run_exactly_n_trials(tmp_path, kind):
    """Both create the study's tables at the same instant (a race on a fresh database), both
    work on it, neither starts a trial number twice, and each waits for the other's last trial
    before it says the result: both print the same, final, best trial."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else \
        fresh_postgres_database()
    boxes = [machine(tmp_path, name, epochs=1) for name in ("a", "b")]
    processes = [sweep(box, storage, "--trials", "3") for box in boxes]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    trials = trials_of(storage)
    assert sorted(trial.number for trial in trials) == [0, 1, 2]
    assert {trial.state for trial in trials} == {optuna.trial.TrialState.COMPLETE}
    assert {trial.user_attrs["host"] for trial in trials} == {"a", "b"}  # both contributed
    best = min(trials, key=lambda trial: trial.value).number
    for output in outputs:
        assert f"Best: trial {best}," in output and "Interim" not in output, output
        assert "3 of 3 trials done (3 complete)" in output, output
    from matplotlib.image import imread

    for box in boxes:  # the plots a sweep leaves at its end, on each machine
        for name in ("history", "parallel_coordinates", "intermediate_values"):
            assert imread(box["folder"] / "plots" / f"{name}.png").shape[:2] == (550, 900)


@pytest.mark.slow
def test_a_lost_machines_trial_runs_again_elsewhere_from_its_checkpoint(tmp_path):
    """Machine a is killed (SIGKILL: its sweep and its trial) in trial 0's second epoch.
    Machine b, sharing the save_dir, sees trial 0's heartbeat stop, fails it and runs it again
    as a new trial resumed from trial 0's checkpoint; the study still ends with 2 finished
    trials that count."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = tmp_path / "shared_saved"
    a, b = (machine(tmp_path, name, epochs=6, save_dir=shared) for name in ("a", "b"))
    first = sweep(a, storage, "--trials", "2", "--heartbeat", "1")
    checkpoint = a["folder"] / "models/Digits_CNN/trial-0000/checkpoint-epoch1.pth"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    trial_pid = trials_of(storage)[0].user_attrs["pid"]
    os.kill(trial_pid, signal.SIGKILL)  # the machine is gone: nothing saves, nothing beats
    first.kill()
    first.communicate(timeout=60)
    assert trials_of(storage)[0].state == optuna.trial.TrialState.RUNNING

    second = sweep(b, storage, "--trials", "2", "--heartbeat", "1")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    trials = {trial.number: trial for trial in trials_of(storage)}
    assert trials[0].state == optuna.trial.TrialState.FAIL
    rows = json.loads((b["folder"] / "trials.json").read_text())["trials"]
    assert rows[0]["state"] == "lost" and rows[0]["error"] == \
        "lost: its machine (a) stopped beating"
    assert "trial-0000: lost: its machine (a) stopped beating for 3 s; it runs again as " \
           "trial " in output, output
    rerun = next(number for number, trial in trials.items()
                 if retry_history(trial) == [0])
    assert f"trial-{rerun:04d}: resumed from trial-0000's checkpoint (trial 0 was lost with " \
           f"its machine)" in output, output
    assert trials[rerun].params == trials[0].params
    assert trials[rerun].user_attrs["run"] == "trial-0000"
    assert sorted(trials[rerun].intermediate_values) == list(range(1, 7))  # epoch 1: a's
    manifest = json.loads((a["folder"] / "models/Digits_CNN/trial-0000/manifest.json")
                          .read_text())
    assert [session["trial"]["number"] for session in manifest["sessions"]] == [0, rerun]
    counted = [trial for number, trial in trials.items() if number != 0]
    assert len(counted) == 2 and all(trial.state == optuna.trial.TrialState.COMPLETE
                                     for trial in counted)
    assert "2 of 2 trials done (2 complete)" in output, output


@pytest.mark.slow
def test_a_result_while_a_trial_runs_elsewhere_is_interim_until_it_ends(tmp_path, capsys):
    """Machine b's trial still runs (its sweep beats for it) when machine a has nothing left:
    a waits and says for what; stopped there, its best_config.json is marked interim; once b's
    trial ends, `--report` (which remembers the storage) writes the final one, and the plots."""
    from matplotlib.image import imread

    import sweep as sweep_py

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    a = machine(tmp_path, "a", epochs=1)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    elsewhere = study.ask({"optimizer.args.lr": optuna.distributions.CategoricalDistribution(
        [0.01, 0.003])})
    elsewhere.set_user_attr("host", "b")
    process = sweep(a, storage, "--trials", "2", "--heartbeat", "60")
    waited = ""
    for line in process.stdout:
        waited += line
        if line.startswith("Waiting for"):
            process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, waited
    assert "Waiting for 1 trial still running elsewhere (trial 0 on b): the result is final " \
           "when it ends" in waited
    assert "Interim: 1 trial (0) is still running or queued; best_config.json is marked interim" \
           in waited
    assert "Best so far: trial 1," in waited
    best = json.loads((a["folder"] / "best_config.json").read_text())
    assert best["_interim"].startswith("interim: the best of the trials finished")
    assert json.loads((a["folder"] / "trials.json").read_text())["final"] is False

    study.tell(elsewhere, -1.0)  # b's trial ends, the best (val_loss -1)
    capsys.readouterr()
    assert sweep_py.main(["--report", str(a["folder"])]) == 0  # no --storage: remembered
    report = capsys.readouterr().out
    assert "Best: trial 0, val_loss -1" in report and "Interim" not in report
    best = json.loads((a["folder"] / "best_config.json").read_text())
    assert "_interim" not in best and best["optimizer"]["args"]["lr"] == elsewhere.params[
        "optimizer.args.lr"]
    assert json.loads((a["folder"] / "trials.json").read_text())["final"] is True
    plots = sorted(path.name for path in (a["folder"] / "plots").glob("*.png"))
    assert plots == ["history.png", "intermediate_values.png", "parallel_coordinates.png"]
    for name in plots:  # real images, of the size written
        assert imread(a["folder"] / "plots" / name).shape[:2] == (550, 900), name
    assert f"Plots: {a['folder'] / 'plots'}/" in report


@pytest.mark.slow
def test_enqueue_runs_a_known_config_first_and_timeout_stops_to_go_on_later(tmp_path):
    """`--enqueue baseline.json`: trial 0 has the baseline's values; `--timeout` stops the
    running trial cleanly (it resumes with the same command); the progress lines count the
    trials done."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    a = machine(tmp_path, "a", epochs=25, early_stop=0)
    baseline = json.loads((a["home"] / "config.json").read_text())
    baseline["optimizer"]["args"]["lr"], baseline["arch"]["args"]["dropout"] = 0.003, 0.25
    (a["home"] / "baseline.json").write_text(json.dumps(baseline))
    first = sweep(a, storage, "--trials", "1", "--enqueue", "baseline.json", "--timeout", "5")
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output  # not a failure: nothing completed, as asked
    assert "Time limit (5 s) reached: no new trials; the running ones save their checkpoints " \
           "and stop" in output, output
    trials = trials_of(storage)
    assert len(trials) == 1 and trials[0].params == {"optimizer.args.lr": 0.003,
                                                     "arch.args.dropout": 0.25}
    assert trials[0].state == optuna.trial.TrialState.RUNNING  # interrupted, to go on
    # (stopped while still starting, it has no run folder: it starts again instead)
    resumed = (a["folder"] / "models/Digits_CNN/trial-0000").is_dir()

    again = sweep(a, storage, "--trials", "1", "--enqueue", "baseline.json")
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert f"trial-0000: {'resumed from its checkpoint' if resumed else 'started'} (" in \
        output, output
    trials = trials_of(storage)
    assert [trial.state.name for trial in trials] == ["COMPLETE"]  # the baseline queued once
    assert "trial-0000: complete (value " in output and \
        "; 1 of 1 trials done (1 complete); best val_loss " in output, output


def test_an_enqueued_config_outside_the_space_is_one_line_and_writes_nothing(tmp_path,
                                                                            monkeypatch):
    import sweep as sweep_py
    from utils.errors import ConfigError

    a = machine(tmp_path, "a", epochs=1)
    baseline = json.loads((a["home"] / "config.json").read_text())  # lr 0.001: not a choice
    del baseline["arch"]["args"]
    (a["home"] / "baseline.json").write_text(json.dumps(baseline))
    monkeypatch.chdir(a["home"])
    with pytest.raises(ConfigError) as raised:
        sweep_py.main(["-c", "config.json", "-s", "space.json", "--enqueue", "baseline.json",
                       "--storage", f"sqlite:///{tmp_path / 'study.db'}"])
    assert raised.value.problems == [
        "--enqueue baseline.json: optimizer.args.lr is 0.001, not one of the space's choices",
        "--enqueue baseline.json: arch.args: missing from the config (an enqueued config "
        "sets every key the space searches)"]
    assert not (tmp_path / "study.db").exists() and not a["folder"].exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", storages())
def test_several_machines_opening_a_fresh_database_at_once_all_open_it(tmp_path, kind):
    """Each creates the study's tables; all but one lose that race (PostgreSQL: a duplicate
    key in pg_type; SQLite: the schema version row) and try again, instead of exiting 2."""
    storage = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else \
        fresh_postgres_database()
    code = "import sys; from search.trial import open_storage; open_storage(sys.argv[1]); " \
           "print('opened')"
    processes = [subprocess.Popen([sys.executable, "-c", code, storage], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [output.strip() for output in outputs] == ["opened"] * 3, outputs


def a_sweep(tmp_path: Path, storage: str, **options):
    """A Sweep on `storage` (a study made by the test), its folder `tmp_path / 'sweep'`."""
    from search.study import Sweep

    folder = tmp_path / "sweep"
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    defaults = {"trials": 2, "jobs": 1, "seed": 0, "sampler": "random", "pruner": "none",
                "prune_after": 0, "heartbeat": 1}
    return Sweep(folder, {"config": {"name": "Digits_CNN"}, "space": SPACE,
                          "monitor": "min val_loss"}, storage, STUDY, {**defaults, **options},
                 lambda values: {})


def test_a_trial_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch, capsys):
    """Its run folder exists (a manifest, no checkpoint): `train.py -r` would refuse it, so
    the trial starts from the beginning in a clean folder, under its own run id."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_of = a_sweep(tmp_path, storage)
    study = sweep_of.study()
    number = study.ask().number
    run = sweep_of.run_folder("trial-0000")
    run.mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command)
                        or type("Process", (), {"pid": 1, "poll": lambda self: None})())
    monkeypatch.setattr(sweep_of, "_is_own_trial", lambda folder, owner: True)
    sweep_of._start(study, number, resume=True)
    command = started[0]
    assert "-r" not in command and command[command.index("--run-id") + 1] == "trial-0000"
    assert not run.exists()
    assert "trial-0000: stopped before its first checkpoint; it starts again" in \
        capsys.readouterr().out
    assert sweep_of._lost_run(study, number) is None  # (a re-run would start over too)


def test_a_bad_storage_url_writes_no_sweep_folder_so_the_right_one_is_taken_next(tmp_path,
                                                                              monkeypatch):
    import sweep as sweep_py

    a = machine(tmp_path, "a", epochs=1)
    monkeypatch.chdir(a["home"])
    arguments = ["-c", "config.json", "-s", "space.json", "--study", STUDY]
    for url, message in (("postgres://ann:secret@db/studies", "SQLAlchemy knows no database"),
                         ("sqlite://", "an in-memory SQLite database is not shared"),
                         (f"sqlite:///{tmp_path}/no/such/dir.db", "cannot open the study's")):
        with pytest.raises(UserError) as raised:
            sweep_py.main([*arguments, "--storage", url])
        assert message in str(raised.value) and "secret" not in str(raised.value)
        assert not a["folder"].exists()


def test_sweeps_of_one_study_must_beat_alike_and_enqueued_values_match_the_space(tmp_path):
    from search.search_space import enqueued_params

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    a_sweep(tmp_path, storage, heartbeat=30)._agree_on_heartbeat()
    with pytest.raises(UserError, match=r"^--heartbeat 1: the sweeps of study 'shared' beat "
                                        r"every 30 s \(its first sweep's --heartbeat\); give "
                                        r"--heartbeat 30$"):
        a_sweep(tmp_path, storage, heartbeat=1)._agree_on_heartbeat()

    space = {"arch.args.dropout": {"choice": [0.0, 0.25]},
             "data_loader.args.batch_size": {"int": [32, 128], "step": 32}}
    config = {"arch": {"args": {"dropout": 0}}, "data_loader": {"args": {"batch_size": 64.0}}}
    assert enqueued_params(config, space, "w") == (
        {"arch.args.dropout": 0.0, "data_loader.args.batch_size": 64}, [])  # 0 is 0.0
    config["data_loader"]["args"]["batch_size"] = 50
    assert enqueued_params(config, space, "w")[1] == [
        "w: data_loader.args.batch_size is 50, not on the space's steps of 32 from 32"]


@pytest.mark.slow
def test_a_trial_no_sweep_ever_beat_for_is_adopted_and_then_lost(tmp_path, capsys):
    """A trial left running by a sweep without heartbeats (an older version) would keep a
    study waiting forever: a sweep beats for it once, and it is lost 3 heartbeats later."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_of = a_sweep(tmp_path, storage)
    study = sweep_of.study()
    old = study.ask()
    old.set_user_attr("host", "old-machine")
    sweep_of._beat()
    time.sleep(4.5)  # more than 3 heartbeats of 1 s (SQLite's clock counts whole seconds)
    sweep_of.next_beat = 0
    sweep_of._beat()
    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert retry_history(trials[1]) == [0] and trials[1].state == optuna.trial.TrialState.WAITING
    assert "trial-0000: lost: its machine (old-machine) stopped beating for 3 s; it runs " \
           "again as trial 1" in capsys.readouterr().out
