"""Shared fixtures: the real config shrunk to a few seconds, and a runner for the real CLI."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def small_config(save_dir: Path, **trainer) -> dict:
    """`config.json` shrunk for tests: 3 epochs, no TensorBoard, output under `save_dir`."""
    config = json.loads((ROOT / "config.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["trainer"].update({"epochs": 3, "save_dir": str(save_dir), "tensorboard": False,
                              "verbosity": 1, **trainer})
    return config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The shrunk real config written to a file, saving runs under `tmp_path/saved`."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(small_config(tmp_path / "saved"), indent=2))
    return path


def build(tmp_path: Path, modification: dict | None = None, **trainer):
    """The Trainer `train.py` builds from the shrunk real config (with `{key.path: value}`
    `modification` and `trainer` settings), on the CPU; nothing written."""
    import train
    from parse_config import ConfigParser

    config = ConfigParser(small_config(tmp_path / "saved", **trainer), modification=modification)
    config.validate(train.blocks())
    return train.build_trainer(config, device=None)


def mark_run_folder(folder: Path) -> Path:
    """Make `folder` a run folder as train.py leaves one (config.json, and a manifest that
    names the folder and its log folder), so that `-r` continues it in place."""
    from runs.manifest import add_session

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    add_session(folder, folder.parent / "log", {"command": ["test"]})
    return folder


def from_command_line(argv: list[str], options=(), evaluating: bool = False):
    """The `ConfigParser` train.py (test.py with `evaluating`) makes of a command line."""
    import argparse

    from config.command_line import parse_command_line
    from parse_config import ConfigParser
    from runs.run_folder import resolve_resume

    args = parse_command_line(argparse.ArgumentParser(), options, argv, evaluating)
    resume = resolve_resume(args.resume, args.config is not None, evaluating) \
        if args.resume else None
    return ConfigParser.from_args(args, options, resume, evaluating)


def signal_at(step: int, signum: int):
    """A callback that makes a signal arrive during optimizer step `step` (the run then stops
    after it), through the public `Callback` seam."""
    from trainer.trainer import Callback

    class SignalAt(Callback):
        def on_step_end(self, trainer):
            if trainer.global_step == step:
                trainer.stop_signals.received = signum
    return SignalAt()


@contextlib.contextmanager
def killed_after(process: subprocess.Popen, seconds: float = 180):
    """Kill `process` if it still runs after `seconds` — its whole process group when it leads
    one (`start_new_session`: torchrun's workers hold its output pipe too) — so that a test
    reading its output line by line fails instead of hanging until CI's time limit."""
    fired = []

    def kill():
        fired.append(True)
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if fired:
        raise AssertionError(f"still running after {seconds} s, killed: {process.args}")


def run_script(script: str, *args: str, cwd: Path = ROOT, check: bool = True,
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the project's scripts the way a user does, in a fresh Python process."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def run_main(script: str, *args: str, cwd: Path = ROOT,
             check: bool = True) -> subprocess.CompletedProcess:
    """`run_script` in this process, for tests where a fresh process is not the point (it
    saves the seconds of starting one): the script's `main` under the same CLI edge (`run_cli`:
    one line per error, exit codes), its stdout and stderr captured."""
    import contextlib
    import importlib
    import io

    from utils.cli import run_cli

    module = importlib.import_module(Path(script).stem)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(cwd):
        try:
            run_cli(lambda: module.main(list(args)))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    result = subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {code}\n"
                             f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


NOBODY = 65534  # the unprivileged user of Debian-like systems


def as_unprivileged(function):
    """`function()` run by a user whom file permissions restrict: in a forked child as
    `nobody` when the tests run as root (for root, chmod restricts nothing), else here. Returns
    what it returned, re-raises what it raised. Keep `function` to file work: the child is a
    fork of a process that may have started threads."""
    if os.geteuid() != 0:
        return function()
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, send the outcome back, leave without cleanup
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome = ("returned", function())
            except BaseException as error:  # noqa: BLE001 (why: handed to the parent as is)
                outcome = ("raised", error)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(outcome, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "raised":
        raise value
    return value


@pytest.fixture
def shared_tmp():
    """A folder every user may write in (tmp_path is root's alone), for `as_unprivileged`."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="unprivileged-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def read_only(folder: Path) -> Path:
    """`folder` (made if needed) that only its owner's and root's powers write in: with
    `as_unprivileged`, a real permission error, not a simulated one."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, 0, 0)
    folder.chmod(0o555)
    return folder


def writable(folder: Path) -> Path:
    """`folder` (made if needed) that everyone may write in."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    return folder


def run_folders(save_dir: Path, name: str = "Digits_CNN") -> list[Path]:
    folder = save_dir / "models" / name
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never download: any connection attempt from the test process fails loudly."""
    import socket

    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # local sockets stay (workers use them)
            raise RuntimeError(f"tests may not use the network (connect to {address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def straight_and_resumed(tmp_path: Path, config: dict, stop_after_step: int) -> tuple[dict, dict]:
    """`config` trained straight (run "whole") and stopped by SIGTERM after optimizer step
    `stop_after_step`, then resumed (run "cut"), in this process; their last epoch's
    checkpoints, for a test that they agree."""
    import signal

    import train
    from trainer.trainer import Callback
    from utils.checkpoint import load_checkpoint
    from utils.interrupts import TrainingInterrupted

    class StopAtStep(Callback):
        def on_step_end(self, trainer):
            if trainer.global_step == stop_after_step:
                trainer.stop_signals.received = signal.SIGTERM

    path = tmp_path / "straight_and_resumed.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", "whole"])
    with pytest.raises(TrainingInterrupted):
        train.main(["-c", str(path), "--run-id", "cut"], callbacks=[StopAtStep()])
    runs = Path(config["trainer"]["save_dir"]) / "models" / config["name"]
    train.main(["-r", str(runs / "cut")])
    last = f"checkpoint-epoch{config['trainer']['epochs']}.pth"
    return load_checkpoint(runs / "whole" / last), load_checkpoint(runs / "cut" / last)
