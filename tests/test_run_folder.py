"""base/run_folder.py: which checkpoint of a run folder `-r` means, which files are stale."""
import pytest

from base.run_folder import (INTERRUPTED_NAME, find_checkpoint, is_latest_in_run, prune_checkpoints,
                             resolve_resume)
from model.model import DigitsModel
from tests.test_checkpoint import minimal_checkpoint
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError


def test_a_run_folder_resumes_from_its_newest_loadable_checkpoint(tmp_path, caplog):
    def save(name, epoch, step=0):
        state = {**minimal_checkpoint(DigitsModel()), "epoch": epoch, "epoch_step": step}
        save_checkpoint(state, tmp_path / name)
    save("checkpoint-epoch1.pth", 1)
    save("checkpoint-epoch2.pth", 2)
    assert find_checkpoint(tmp_path).name == "checkpoint-epoch2.pth"
    save(INTERRUPTED_NAME, 2, step=5)  # stopped 5 steps into epoch 3
    assert find_checkpoint(tmp_path).name == INTERRUPTED_NAME
    save("checkpoint-epoch3.pth", 3)
    assert find_checkpoint(tmp_path).name == "checkpoint-epoch3.pth"
    (tmp_path / "checkpoint-epoch4.pth").write_bytes(b"torn by a power cut")
    assert find_checkpoint(tmp_path).name == "checkpoint-epoch3.pth"
    assert "checkpoint-epoch4.pth: not a checkpoint" in caplog.text


def test_keep_last_keeps_the_newest_and_the_one_resumed_from(tmp_path):
    for epoch in range(1, 6):
        save_checkpoint(minimal_checkpoint(DigitsModel()), tmp_path / f"checkpoint-epoch{epoch}.pth")
    (tmp_path / "model_best.pth").write_bytes(b"best")
    deleted = prune_checkpoints(tmp_path, 2, protect=tmp_path / "checkpoint-epoch1.pth")
    assert sorted(p.name for p in deleted) == ["checkpoint-epoch2.pth", "checkpoint-epoch3.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch1.pth", "checkpoint-epoch4.pth", "checkpoint-epoch5.pth", "model_best.pth"]


def test_a_torn_later_checkpoint_does_not_make_a_resume_branch_off(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for epoch in (2, 3):
        state = {**minimal_checkpoint(DigitsModel()), "epoch": epoch}
        save_checkpoint(state, tmp_path / f"checkpoint-epoch{epoch}.pth")
    second = load_checkpoint(tmp_path / "checkpoint-epoch2.pth")
    assert not is_latest_in_run(tmp_path / "checkpoint-epoch2.pth", second)
    (tmp_path / "checkpoint-epoch3.pth").write_bytes(b"torn")
    assert is_latest_in_run(tmp_path / "checkpoint-epoch2.pth", second)


def test_evaluating_a_run_folder_means_its_best_model(tmp_path):
    for name in ("checkpoint-epoch1.pth", "checkpoint-epoch2.pth"):
        save_checkpoint(minimal_checkpoint(DigitsModel()), tmp_path / name)
    assert find_checkpoint(tmp_path, prefer_best=True).name == "checkpoint-epoch2.pth"
    save_checkpoint(minimal_checkpoint(DigitsModel()), tmp_path / "model_best.pth")
    assert find_checkpoint(tmp_path, prefer_best=True).name == "model_best.pth"
    assert find_checkpoint(tmp_path).name == "checkpoint-epoch2.pth"  # resuming: the newest


def test_r_alone_continues_the_newest_checkpoint_and_branches_off_an_older_one(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for epoch in (1, 2):
        state = {**minimal_checkpoint(DigitsModel()), "epoch": epoch}
        save_checkpoint(state, tmp_path / f"checkpoint-epoch{epoch}.pth")
    newest = resolve_resume(str(tmp_path), with_config=False)
    assert newest.path.name == "checkpoint-epoch2.pth" and newest.continue_run
    assert newest.config == {"name": "x"} and newest.problems == []
    older = resolve_resume(str(tmp_path / "checkpoint-epoch1.pth"), with_config=False)
    assert not older.continue_run


def test_with_a_config_a_bad_file_is_a_problem_reported_with_the_configs(tmp_path):
    resume = resolve_resume(str(tmp_path / "missing.pth"), with_config=True)
    assert resume.config is None and resume.problems == [
        f"-r {tmp_path / 'missing.pth'}: no such checkpoint file"]


def test_a_folder_without_checkpoints_is_one_error_naming_it(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="a folder with no loadable checkpoint-epochN.pth"):
        find_checkpoint(tmp_path)
