"""runs/checkpoint_saver.py: which checkpoint files a run writes, and when."""
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from runs.checkpoint_saver import CheckpointSaver
from runs.run_folder import INTERRUPTED_NAME
from tests.conftest import ROOT, small_config
from utils.checkpoint import FORMAT_VERSION, load_checkpoint
from utils.errors import WriteError


def state(epoch: int):
    return lambda: {"format_version": FORMAT_VERSION, "arch": "M", "epoch": epoch,
                    "state_dict": {}, "config": {}}


def names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("epoch, stopping, due", [(3, False, True), (4, False, False),
                                                  (4, True, True), (10, False, True)])
def test_an_epoch_file_every_save_period_at_the_last_epoch_and_at_an_early_stop(
        tmp_path, epoch, stopping, due):
    saver = CheckpointSaver(lambda: tmp_path, save_period=3)
    assert saver.is_due(epoch, last_epoch=10, stopping=stopping) == due


def test_keep_last_prunes_old_epoch_files_but_not_the_one_resumed_from(tmp_path):
    saver = CheckpointSaver(lambda: tmp_path, keep_last=2,
                            protect=tmp_path / "checkpoint-epoch1.pth")
    for epoch in range(1, 5):
        saver.save_epoch(epoch, state(epoch))
    assert names(tmp_path) == ["checkpoint-epoch1.pth", "checkpoint-epoch3.pth",
                               "checkpoint-epoch4.pth"]
    assert saver.last_saved == tmp_path / "checkpoint-epoch4.pth"


def test_an_epoch_file_supersedes_the_interrupted_one(tmp_path):
    saver = CheckpointSaver(lambda: tmp_path)
    assert saver.save_interrupted(state(2)).name == INTERRUPTED_NAME
    saver.save_epoch(3, state(3))
    assert names(tmp_path) == ["checkpoint-epoch3.pth"]


@pytest.mark.parametrize("background", [False, True])
def test_the_best_is_a_link_to_the_epoch_file_or_a_file_of_its_own(tmp_path, background):
    saver = CheckpointSaver(lambda: tmp_path, background=background)
    saved = saver.save(1, state(1), epoch_file=True, best=True)
    saver.finish()
    assert os.path.samefile(saved, saver.best_path)
    assert saver.save(2, state(2), epoch_file=False, best=True) is None  # no epoch file
    saver.finish()
    assert not os.path.samefile(saved, saver.best_path)
    assert load_checkpoint(saver.best_path)["epoch"] == 2 and load_checkpoint(saved)["epoch"] == 1


def test_the_state_is_built_once_and_only_when_a_file_is_written(tmp_path):
    built = []
    saver = CheckpointSaver(lambda: tmp_path)
    assert saver.save(1, lambda: built.append(1) or state(1)(), False, False) is None
    assert built == []  # nothing due: nothing built
    saver.save(1, lambda: built.append(1) or state(1)(), epoch_file=True, best=True)
    assert built == [1]  # the best is linked to the epoch file: built once


def test_a_full_disk_is_one_line_naming_the_checkpoint_that_is_intact(tmp_path, monkeypatch):
    import runs.checkpoint_saver as module

    saver = CheckpointSaver(lambda: tmp_path / "my run")
    (tmp_path / "my run").mkdir()
    saver.save_epoch(1, state(1))

    def full(content, path):
        raise WriteError(f"no space left on device while writing {path}", no_room=True)
    monkeypatch.setattr(module, "save_checkpoint", full)
    with pytest.raises(WriteError) as raised:
        saver.save_epoch(2, state(2))
    assert raised.value.problems == [
        f"no space left on device while writing {tmp_path}/my run/checkpoint-epoch2.pth; the "
        f"previous checkpoint checkpoint-epoch1.pth is intact; free space (or fix the folder) "
        f"and resume with: python train.py -r '{tmp_path}/my run'"]
    assert raised.value.no_room


def test_a_failed_first_save_of_a_branched_resume_points_at_the_checkpoint_it_came_from(
        tmp_path, monkeypatch):
    """A resume that branched into a new folder and could not save there: the hint resumes the
    checkpoint it started from, not the new folder (which holds none)."""
    import runs.checkpoint_saver as module

    origin = tmp_path / "old run" / "checkpoint-epoch3.pth"
    saver = CheckpointSaver(lambda: tmp_path / "new run", protect=origin)
    (tmp_path / "new run").mkdir()

    def full(content, path):
        raise WriteError(f"no space left on device while writing {path}", no_room=True)
    monkeypatch.setattr(module, "save_checkpoint", full)
    with pytest.raises(WriteError) as raised:
        saver.save_epoch(4, state(4))
    assert raised.value.problems[0].endswith(
        f"the previous checkpoint checkpoint-epoch3.pth is intact; free space (or fix the "
        f"folder) and resume with: python train.py -r '{origin}'")


@pytest.mark.slow
def test_a_file_size_limit_during_the_first_save_is_one_line_and_leaves_no_temp_file(tmp_path):
    """The real train.py under RLIMIT_FSIZE: the config and manifest fit, a checkpoint does not
    (the kernel's EFBIG stands for a full disk's ENOSPC: the same path through torch.save)."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a fatal signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-c", str(config),
                             "--run-id", "r"], capture_output=True, text=True, cwd=tmp_path,
                            preexec_fn=limit, timeout=300)
    run = tmp_path / "saved/models/Digits_CNN/r"
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: file size limit exceeded while writing {run}/checkpoint-epoch1.pth; no "
        f"checkpoint of this run was written; free space (or fix the folder) and start it "
        f"again")  # not a resume of a folder that holds no checkpoint
    assert sorted(path.name for path in run.iterdir()) == [".writer.lock", "config.json",
                                                          "manifest.json"]


def test_a_background_write_holds_the_state_of_the_save_point(tmp_path):
    """Training changes the weights in place right after the save: the file still holds them
    as they were when it was saved."""
    import torch

    weights = torch.zeros(1000)
    saver = CheckpointSaver(lambda: tmp_path, background=True)
    saver.save(1, lambda: {**state(1)(), "state_dict": {"w": weights}})
    weights += 1  # the next epoch trains while the thread writes
    saver.finish()
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint-epoch1.pth")["state_dict"]["w"],
                       torch.zeros(1000))


def test_a_failed_background_write_is_one_line_at_the_next_save_and_loses_nothing(
        tmp_path, monkeypatch):
    import runs.checkpoint_saver as module

    saver = CheckpointSaver(lambda: tmp_path, background=True)
    saver.save(1, state(1))
    saver.finish()
    real = module.save_checkpoint

    def full(content, path):
        if "epoch2" in str(path):
            raise WriteError(f"no space left on device while writing {path}", no_room=True)
        real(content, path)
    monkeypatch.setattr(module, "save_checkpoint", full)
    saver.save(2, state(2))  # fails in the thread: training goes on
    with pytest.raises(WriteError) as raised:
        saver.save(3, state(3))  # told here, before anything else is written
    assert raised.value.problems == [
        f"no space left on device while writing {tmp_path}/checkpoint-epoch2.pth; the previous "
        f"checkpoint checkpoint-epoch1.pth is intact; free space (or fix the folder) and resume "
        f"with: python train.py -r {tmp_path}"]
    assert names(tmp_path) == ["checkpoint-epoch1.pth"]
    assert saver.last_saved == tmp_path / "checkpoint-epoch1.pth"
    saver.finish()  # told once


@pytest.mark.slow
def test_a_background_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    """SIGKILL while the thread writes epoch 2: epoch 1 loads, no epoch 2 file, and the only
    other thing left is the write's temp file (the next lock holder removes it)."""
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
import runs.checkpoint_saver as module
from runs.checkpoint_saver import CheckpointSaver
from utils.checkpoint import FORMAT_VERSION
from utils.files import atomic_write

folder = Path({str(tmp_path)!r})
state = lambda epoch: lambda: {{"format_version": FORMAT_VERSION, "arch": "M", "epoch": epoch,
                               "state_dict": {{}}, "config": {{}}}}
saver = CheckpointSaver(lambda: folder, background=True)
saver.save(1, state(1))
saver.finish()

def slow(content, path):
    def write(file):
        file.write(b"PK" * 1000)
        file.flush()
        print("writing", flush=True)
        time.sleep(60)
    atomic_write(path, write)
module.save_checkpoint = slow
saver.save(2, state(2))
time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()
    assert load_checkpoint(tmp_path / "checkpoint-epoch1.pth")["epoch"] == 1
    left = names(tmp_path)
    assert "checkpoint-epoch2.pth" not in left and len(left) == 2
    assert left[0].startswith(".checkpoint-epoch2.pth.") and left[0].endswith(".tmp")


def test_a_failed_first_save_of_a_fine_tuning_does_not_offer_to_resume_the_pretrained_run(
        tmp_path, monkeypatch):
    import runs.checkpoint_saver as module

    pretrained = tmp_path / "pretrained" / "model_best.pth"
    saver = CheckpointSaver(lambda: tmp_path / "new run", protect=pretrained, resumed=False)
    (tmp_path / "new run").mkdir()
    monkeypatch.setattr(module, "save_checkpoint", lambda content, path: (_ for _ in ()).throw(
        WriteError(f"no space left on device while writing {path}", no_room=True)))
    with pytest.raises(WriteError) as raised:
        saver.save_epoch(1, state(1))
    assert raised.value.problems[0].endswith(
        "no checkpoint of this run was written; free space (or fix the folder) and start it "
        "again")


def test_the_state_copy_keeps_a_state_dicts_type_its_metadata_and_tied_weights():
    import torch

    from runs.checkpoint_saver import host_copy

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied
    state = model.state_dict()
    copied = host_copy({"state_dict": state, "pair": (1, state["0.bias"])})
    assert type(copied["state_dict"]) is type(state)
    assert copied["state_dict"]._metadata == state._metadata
    assert copied["state_dict"]["0.weight"] is copied["state_dict"]["1.weight"]
    assert copied["state_dict"]["0.weight"] is not state["0.weight"]
    assert torch.equal(copied["pair"][1], state["0.bias"]) and copied["pair"][0] == 1
