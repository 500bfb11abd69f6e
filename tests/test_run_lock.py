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
