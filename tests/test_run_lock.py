"""runs/run_lock.py: one writer per run folder — a lock the operating system holds for it."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from runs.run_lock import LOCK_NAME, RunLock
from tests.conftest import ROOT, run_script
from tests.test_interrupts import finish, run_folder, start, wait_for, write_config
from utils.errors import UserError


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(UserError, match=rf"another process is writing this run folder "
                                        rf"\(pid {os.getpid()} on {socket.gethostname()}\)"):
        RunLock(tmp_path).acquire()  # flock: a second open file is a second writer
    first.release()
    RunLock(tmp_path).acquire()  # free again


def test_a_run_folder_without_write_permission_is_one_line(shared_tmp):
    """Resuming into a run folder the user may not write in (really: root's powers dropped)."""
    from tests.conftest import as_unprivileged, read_only

    folder = read_only(shared_tmp / "run")
    with pytest.raises(UserError, match=rf"^{folder}/{LOCK_NAME}: cannot open the run folder's "
                                        rf"lock file \(Permission denied\)$"):
        as_unprivileged(RunLock(folder).acquire)
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from runs.run_lock import RunLock; "
        "lock = RunLock(sys.argv[2]); lock.acquire(); print('held', flush=True); time.sleep(60)"),
        str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire()  # the kernel dropped the lock with the process
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")


def test_taking_the_lock_removes_only_the_templates_dead_temp_files(tmp_path):
    dead = [".checkpoint-epoch3.pth.k2j_9x.tmp", ".model_best.pth.4242.link.tmp",
            ".manifest.json.abc123.tmp"]
    kept = [".notes.tmp", ".mine.pth.1.tmp", "data.tmp", "checkpoint-epoch2.pth"]
    for name in dead + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = RunLock(tmp_path).acquire()
    assert sorted(path.name for path in removed) == sorted(dead)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*kept, LOCK_NAME])


@pytest.mark.slow
def test_resuming_a_run_that_is_still_training_is_refused_and_writes_nothing(tmp_path):
    config = write_config(tmp_path, "busy")
    # slow enough after epoch 1 (0.5 s a step) to be training while the second process starts
    process, seen = start("-c", str(config), env={"STEP_DELAY": "0.5",
                                                  "STEP_DELAY_FROM": "21"}), []
    try:
        wait_for(process, "STEP 22", seen)  # epoch 1's checkpoint is there to resume
        folder = run_folder(tmp_path, "busy")
        before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
        second = run_script("train.py", "-r", str(folder), "--lr", "0.5", check=False)
        assert process.poll() is None, "the first run ended too soon to test anything"
    finally:
        process.send_signal(signal.SIGTERM)  # the first run stops as usual, saving
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (f"error: {folder}: another process is writing this run "
                                      f"folder (pid {process.pid} on {socket.gethostname()}); "
                                      f"wait for it to end, or resume from a copy of the "
                                      f"checkpoint into a new run")
    code, out, err = finish(process, seen)
    assert code == 143, err
    after = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert after["config.json"] == before["config.json"]  # the second wrote nothing there
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 1  # the refused resume added no session
    assert manifest["sessions"][0]["config"]["optimizer"]["args"]["lr"] != 0.5


def test_a_symlinked_lock_file_is_refused_and_its_target_left_as_it_was(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UserError, match=rf"^{run}/{LOCK_NAME}: is a symbolic link, not the run "
                                        rf"folder's lock file"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious"


def trained_run(tmp_path, epochs: int):
    """A run folder trained in-process for `epochs` epochs; its folder."""
    import train
    from tests.conftest import run_folders, small_config

    config = tmp_path / "c.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved", epochs=epochs)))
    train.main(["-c", str(config), "--run-id", "run"])
    return run_folders(tmp_path / "saved")[0]


@pytest.mark.slow
def test_a_resume_overtaken_before_it_holds_the_lock_writes_nothing(tmp_path, monkeypatch):
    """Resume B chose checkpoint-epoch1 as the newest; before B holds the folder's lock, run A
    (the same resume, started earlier) writes checkpoint-epoch2 and ends. B must not continue
    from epoch 1 over it: it says so in one line and writes nothing."""
    import train
    from utils.checkpoint import load_checkpoint, save_checkpoint

    run = trained_run(tmp_path, epochs=1)
    original_open_run = train.open_run

    def overtaken(config, trainer, argv):  # A finishes between B's look-up and B's lock
        state = load_checkpoint(run / "checkpoint-epoch1.pth")
        save_checkpoint({**state, "epoch": 2}, run / "checkpoint-epoch2.pth")
        return original_open_run(config, trainer, argv)

    monkeypatch.setattr(train, "open_run", overtaken)
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    with pytest.raises(UserError, match=rf"^{run}: another run wrote a newer checkpoint after "
                                        rf"this one chose checkpoint-epoch1\.pth; nothing was "
                                        rf"written"):
        train.main(["-r", str(run), "--epochs", "3"])
    after = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    assert after == {**before, "checkpoint-epoch2.pth": after["checkpoint-epoch2.pth"],
                     LOCK_NAME: after[LOCK_NAME]}
    assert load_checkpoint(run / "checkpoint-epoch2.pth")["epoch"] == 2
    assert not list(run.glob("config.json.*"))  # A's config was not moved aside as edited


@pytest.mark.slow
def test_a_symlinked_log_file_is_refused_before_anything_is_written(tmp_path):
    import train

    run = trained_run(tmp_path, epochs=1)
    log = tmp_path / "saved" / "log" / "Digits_CNN" / "run" / "info.log"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    log.unlink()
    log.symlink_to(victim)
    manifest = (run / "manifest.json").read_text()
    with pytest.raises(UserError, match=rf"^{log}: is a symbolic link; the template does not "
                                        rf"write through it"):
        train.main(["-r", str(run), "--epochs", "2"])
    assert victim.read_text() == "precious"
    assert (run / "manifest.json").read_text() == manifest  # no session for a start that failed
    assert not (run / "checkpoint-epoch2.pth").exists()


@pytest.mark.slow
def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    import errno

    import runs.run_lock as run_lock
    import train
    from tests.conftest import small_config

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_lock.socket, "gethostname", full_disk)  # written into the lock file
    config = tmp_path / "c.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))
    with pytest.raises(UserError, match=r"\.writer\.lock: cannot write the run folder's lock "
                                        r"file \(No space left on device\); nothing else was "
                                        r"written$"):
        train.main(["-c", str(config), "--run-id", "full"])
    assert not (tmp_path / "saved" / "models" / "Digits_CNN" / "full").exists()
    assert not (tmp_path / "saved" / "log" / "Digits_CNN" / "full").exists()
