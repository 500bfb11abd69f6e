"""Signals, kills and NaNs on real training processes (tests/slow_train.py is the real train.py,
slowed down and printing `STEP n` / `SAVING file` so that a signal lands where the test wants).
The uninterrupted references and the resumed runs train in this process (a fresh one costs
seconds of imports and is not the point there).

The yardstick is a run that was never interrupted: a run stopped by SIGTERM or Ctrl-C (or killed)
and resumed must end with the same weights, optimizer state, learning rate and logged epoch
metrics, compared with `torch.equal` and `==`.
"""
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import tests.noisy_data  # noqa: F401  (the configs name NoisyDigitsDataLoader)
from runs.run_folder import INTERRUPTED_NAME
from tests.conftest import ROOT, killed_after, run_main, small_config
from utils.checkpoint import load_checkpoint

EPOCHS = 3


def write_config(tmp_path: Path, name: str, mutate=None, **trainer) -> Path:
    """The shrunk real config (3 epochs of the digits) saving under `tmp_path/name`."""
    config = small_config(tmp_path / name / "saved", epochs=EPOCHS, **trainer)
    if mutate is not None:
        mutate(config)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def noisy(config: dict) -> None:
    """Random noise on every image, drawn in the main process from the global generators."""
    config["data_loader"]["type"] = "NoisyDigitsDataLoader"


def noisy_with_workers(config: dict) -> None:
    """Random noise drawn in two worker processes, so their seeding matters; TensorBoard on."""
    noisy(config)
    config["data_loader"]["args"]["num_workers"] = 2
    config["trainer"]["tensorboard"] = True


def start(*args: str, env: dict | None = None, session: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_train.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})},
                            start_new_session=session)


def wait_for(process: subprocess.Popen, line: str, seen: list[str]) -> None:
    """Read `process`'s stdout until `line`; fail if it ends first (or is stuck: 180 s)."""
    with killed_after(process):
        for text in process.stdout:
            seen.append(text)
            if text.strip() == line:
                return
    raise AssertionError(f"the run ended before printing {line!r}: "
                         f"{''.join(seen[-20:])}{process.stderr.read()[-3000:]}")


def finish(process: subprocess.Popen, seen: list[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + out, err


def run_folder(tmp_path: Path, name: str) -> Path:
    (folder,) = (tmp_path / name / "saved" / "models" / "Digits_CNN").iterdir()
    return folder


def epoch_metrics(tmp_path: Path, name: str) -> dict[int, dict[str, str]]:
    """The epoch tables in the run's info.log, as logged (text, so equality is exact)."""
    (log,) = (tmp_path / name / "saved" / "log" / "Digits_CNN").glob("*/info.log")
    epochs, current = {}, None
    for line in log.read_text().splitlines():
        if " - trainer - INFO - " not in line:
            continue
        message = line.split(" - INFO - ", 1)[-1]
        header = re.match(r"Epoch (\d+)/\d+  ", message)
        if header:
            current = epochs.setdefault(int(header.group(1)), {})
        elif message.startswith("  ") and current is not None:  # name, train, valid
            name, *values = message.split()
            if name != "train":
                current.update(zip((name, f"val_{name}"), values[:2]))
    return epochs


def assert_same_training(tmp_path: Path, name: str, reference: str) -> None:
    ours = load_checkpoint(run_folder(tmp_path, name) / f"checkpoint-epoch{EPOCHS}.pth")
    theirs = load_checkpoint(run_folder(tmp_path, reference) / f"checkpoint-epoch{EPOCHS}.pth")
    for key, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], tensor), key
    for index, state in theirs["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(ours["optimizer"]["state"][index][key], value), (index, key)
    assert ours["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    assert ours["lr_scheduler"] == theirs["lr_scheduler"]
    assert ours["global_step"] == theirs["global_step"]
    assert ours["monitor_best"] == theirs["monitor_best"]
    assert epoch_metrics(tmp_path, name) == epoch_metrics(tmp_path, reference)
    assert len(epoch_metrics(tmp_path, name)) == EPOCHS


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    """Uninterrupted runs of noisy digits: "plain" loads in the main process, "noisy" in two
    workers."""
    root = tmp_path_factory.mktemp("references")
    for config in (write_config(root, "plain", noisy),
                   write_config(root, "noisy", noisy_with_workers)):
        run_main("train.py", "-c", str(config))
    return root


def copy_config(references: Path, name: str, tmp_path: Path, new_name: str) -> Path:
    config = json.loads((references / f"{name}.json").read_text())
    config["trainer"]["save_dir"] = str(tmp_path / new_name / "saved")
    path = tmp_path / f"{new_name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resuming_matches_an_uninterrupted_run(references, tmp_path):
    config = copy_config(references, "plain", tmp_path, "stopped")
    # slow from step 30 on: epoch 2's rest takes seconds, so the signal lands in it
    process, seen = start("-c", str(config), env={"STEP_DELAY": "0.5", "STEP_DELAY_FROM": "30"}), []
    wait_for(process, "STEP 30", seen)  # epoch 2 of 3 (21 steps an epoch)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process, seen)
    assert code == 143, err
    folder = run_folder(tmp_path, "stopped")
    stopped = load_checkpoint(folder / INTERRUPTED_NAME)
    assert stopped["epoch"] == 1 and 9 <= stopped["epoch_step"] <= 21
    assert f"Stopped by SIGTERM at epoch 2, step {stopped['epoch_step']}" in out
    assert f"Resume with: python train.py -r {folder / INTERRUPTED_NAME}" in out

    run_main("train.py", "-r", str(folder))  # a run folder: its newest checkpoint
    assert run_folder(tmp_path, "stopped") == folder  # continued in the same folder
    assert not (folder / INTERRUPTED_NAME).exists()  # superseded by checkpoint-epoch2.pth
    assert_same_training(tmp_path, "stopped", references / "plain")
    sessions = json.loads((folder / "manifest.json").read_text())["sessions"]
    assert [s["resumed_from"] for s in sessions] == [None, str(folder / INTERRUPTED_NAME)]


@pytest.mark.slow
def test_a_closed_terminal_sighup_saves_like_sigterm(tmp_path):
    config = write_config(tmp_path, "hangup")
    # slow from step 5 on: epoch 1's rest takes seconds (not 0.3 s), so the signal lands in it
    process, seen = start("-c", str(config), env={"STEP_DELAY": "0.5", "STEP_DELAY_FROM": "5"}), []
    wait_for(process, "STEP 5", seen)
    process.send_signal(signal.SIGHUP)
    code, out, err = finish(process, seen)
    assert code == 129, err
    folder = run_folder(tmp_path, "hangup")
    assert 5 <= load_checkpoint(folder / INTERRUPTED_NAME)["epoch_step"] <= 21
    assert "Stopped by SIGHUP at epoch 1, step" in out and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_with_workers_and_a_second_ctrl_c_while_saving(references, tmp_path):
    """Ctrl-C in a terminal reaches the whole process group, the loader's workers included."""
    config = copy_config(references, "noisy", tmp_path, "stopped")
    process, seen = start("-c", str(config), env={
        "STEP_DELAY": "0.5", "STEP_DELAY_FROM": "33",  # epoch 2's rest: seconds to land in
        "SAVE_DELAY": "3", "SAVE_DELAY_FILE": INTERRUPTED_NAME}, session=True), []
    wait_for(process, "STEP 33", seen)
    os.killpg(process.pid, signal.SIGINT)
    wait_for(process, f"SAVING {INTERRUPTED_NAME}", seen)
    os.killpg(process.pid, signal.SIGINT)  # impatient: while the checkpoint is half written
    code, out, err = finish(process, seen)
    assert code == 130, err
    assert "already stopping; the checkpoint is being saved" in err and "Traceback" not in err
    folder = run_folder(tmp_path, "stopped")
    assert load_checkpoint(folder / INTERRUPTED_NAME)["epoch"] == 1
    run_main("train.py", "-r", str(folder / INTERRUPTED_NAME))
    assert_same_training(tmp_path, "stopped", references / "noisy")
    assert tensorboard_points(tmp_path / "stopped") == tensorboard_points(references / "noisy")


def tensorboard_points(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's event files, read back with TensorBoard's own reader (of
    times and speeds only the steps: they differ from run to run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (log_dir,) = (root / "saved" / "log" / "Digits_CNN").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(event.step, None if tag.startswith(("time/", "speed/")) else event.value)
                  for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_sigkill_at_any_point_leaves_every_checkpoint_loadable(references, tmp_path):
    config = copy_config(references, "plain", tmp_path, "killed")
    folder_of = lambda: run_folder(tmp_path, "killed")  # noqa: E731
    torn = []
    for wait, resume, env in (
            ("STEP 30", False, {"STEP_DELAY": "0.01"}),
            # killed by itself half-way through the write: a torn file for certain
            ("SAVING checkpoint-epoch2.pth", True, {"KILL_WHILE_SAVING": "checkpoint-epoch2.pth"}),
            ("STEP 50", True, {"STEP_DELAY": "0.01"})):
        args = ["-r", str(folder_of())] if resume else ["-c", str(config)]
        process, seen = start(*args, env=env), []
        wait_for(process, wait, seen)
        process.kill()
        process.wait(timeout=60)
        for path in folder_of().glob("*.pth"):  # every checkpoint on disk loads
            load_checkpoint(path)
        torn += [path.name for path in folder_of().glob(".*.tmp")]
    assert len(torn) == 1 and torn[0].startswith(".checkpoint-epoch2.pth.")  # the torn write
    run_main("train.py", "-r", str(folder_of()))
    assert not list(folder_of().glob(".*.tmp"))  # cleaned up by the resumed run
    assert_same_training(tmp_path, "killed", references / "plain")


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = write_config(tmp_path, "nan")
    process, seen = start("-c", str(config), env={"NAN_AT_STEP": "30"}), []
    code, out, err = finish(process, seen)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == ("error: the loss became NaN or infinite at epoch 2, step 9 (global "
                           "step 30); stopped without saving, so the newest checkpoint is the last "
                           "good one. Look for NaN in the data, lower the learning rate, or set "
                           "trainer.nan_policy to \"skip\".")
    assert sorted(p.name for p in run_folder(tmp_path, "nan").glob("*.pth")) == [
        "checkpoint-epoch1.pth", "model_best.pth"]


@pytest.mark.slow
def test_nan_policy_skip_leaves_out_the_bad_step(tmp_path):
    config = write_config(tmp_path, "skip", nan_policy="skip")
    process, seen = start("-c", str(config), env={"NAN_AT_STEP": "30"}), []
    code, out, err = finish(process, seen)
    assert code == 0, err
    assert "Skipped step 30: the loss is not finite (nan)." in out
    final = load_checkpoint(run_folder(tmp_path, "skip") / f"checkpoint-epoch{EPOCHS}.pth")
    assert all(torch.isfinite(t).all() for t in final["state_dict"].values())
    assert final["global_step"] == 3 * 21


@pytest.mark.slow
def test_a_signal_during_validation_stops_there_and_resumes_exactly(references, tmp_path):
    """Validation may be long: the run stops after the current validation batch, and the
    checkpoint holds the point before validation (generators included: the noise is drawn from
    them while loading)."""
    config = copy_config(references, "plain", tmp_path, "stopped")
    process, seen = start("-c", str(config), env={"SIGTERM_IN_VALIDATION": "2"}), []
    code, out, err = finish(process, seen)
    assert code == 143, err
    folder = run_folder(tmp_path, "stopped")
    stopped = load_checkpoint(folder / INTERRUPTED_NAME)
    assert (stopped["epoch"], stopped["epoch_step"]) == (1, 21)
    assert "Stopped by SIGTERM at epoch 2, step 21" in out
    with warnings.catch_warnings(record=True) as caught:  # in-process: not on stderr
        warnings.simplefilter("always")
        result = run_main("train.py", "-r", str(folder))
    assert "training from epoch 2's validation" in result.stdout
    assert not caught, [str(warning.message) for warning in caught]
    assert [line for line in (result.stdout + result.stderr).splitlines()
            if "Warning" in line and "no CUDA GPU" not in line] == []  # none but the CPU's
    assert_same_training(tmp_path, "stopped", references / "plain")


def test_a_signal_ignored_when_the_run_starts_stays_ignored_nohup():
    """`nohup python train.py ...`: SIGHUP is ignored before the run starts, so a logout must
    not stop it; the trainer's handler is installed only for the signals that were not."""
    from utils.interrupts import StopSignals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_with_stop_with_parent_gets_sigterm_when_its_parent_is_killed(tmp_path):
    """A sweep killed with SIGKILL: its trial (started with `StopWithParent`) gets SIGTERM
    and saves, instead of training on alone. Here a parent that is SIGKILLed and a child
    that notes the signal it got."""
    import time

    noted = tmp_path / "signal.txt"
    child = (f"import signal, time\n"
             f"def note(signum, frame):\n"
             f"    open({str(noted)!r}, 'w').write(str(signum)); raise SystemExit(0)\n"
             f"signal.signal(signal.SIGTERM, note)\n"
             f"print('ready', flush=True); time.sleep(60)\n")
    parent = (f"import subprocess, sys, time\n"
              f"from utils.interrupts import StopWithParent\n"
              f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True,\n"
              f"                 preexec_fn=StopWithParent())\n"
              f"print('started', flush=True); time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    # both write to this pipe: the child says "ready" once its handler is in place
    assert {process.stdout.readline().strip() for _ in range(2)} == {"started", "ready"}
    process.kill()
    process.wait()
    for _ in range(100):
        if noted.exists() and noted.read_text():
            break
        time.sleep(0.1)
    assert noted.read_text() == str(int(signal.SIGTERM))
