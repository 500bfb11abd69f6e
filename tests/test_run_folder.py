"""runs/run_folder.py: which checkpoint of a run folder `-r` means, which files are stale."""
import json
import shutil

import pytest

from model.model import DigitsModel
from runs.run_folder import (
    INTERRUPTED_NAME,
    find_checkpoint,
    is_latest_in_run,
    prune_checkpoints,
    resolve_resume,
    resume_command,
)
from tests.conftest import mark_run_folder, small_config
from tests.test_checkpoint import flip_a_tensor_byte, minimal_checkpoint
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError


def test_a_run_folder_resumes_from_its_newest_loadable_checkpoint(tmp_path, caplog):
    def save(name, epoch, step=0):
        state = {**minimal_checkpoint(DigitsModel()), "epoch": epoch, "epoch_step": step,
                 "epoch_state": {} if step else None}
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
    mark_run_folder(tmp_path)
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
    mark_run_folder(tmp_path)
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


def checkpoint_in(folder, epoch: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    state = {**minimal_checkpoint(DigitsModel()), "epoch": epoch}
    save_checkpoint(state, folder / f"checkpoint-epoch{epoch}.pth")
    return folder / f"checkpoint-epoch{epoch}.pth"


def test_only_a_folder_the_template_made_there_is_continued_in_place(tmp_path):
    foreign = tmp_path / "Downloads"
    checkpoint_in(foreign)
    (foreign / "config.json").write_text('{"mine": true}')  # any folder may hold a config.json
    assert not resolve_resume(str(foreign / "checkpoint-epoch1.pth"), False).continue_run
    run = mark_run_folder(tmp_path / "models" / "M" / "run1")
    checkpoint_in(run)
    resumed = resolve_resume(str(run), False)
    assert resumed.continue_run and resumed.log_dir == (tmp_path / "models" / "M" / "log")
    copy = tmp_path / "backup" / "run1"
    shutil.copytree(run, copy)  # its manifest names the original folder
    assert not resolve_resume(str(copy), False).continue_run


def test_a_flipped_bit_in_the_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    checkpoint_in(tmp_path, 1)
    newest = checkpoint_in(tmp_path, 2)
    flip_a_tensor_byte(newest)
    assert find_checkpoint(tmp_path).name == "checkpoint-epoch1.pth"
    assert "checkpoint-epoch2.pth: damaged checkpoint (record" in caplog.text


def files_of(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.mark.slow
def test_a_checkpoint_in_a_foreign_folder_or_a_copied_run_starts_a_new_run(tmp_path):
    import train

    (tmp_path / "c.json").write_text(json.dumps(small_config(tmp_path / "saved", epochs=1,
                                                             tensorboard=True)))
    train.main(["-c", str(tmp_path / "c.json"), "--run-id", "orig"])
    run, logs = tmp_path / "saved/models/Digits_CNN/orig", tmp_path / "saved/log/Digits_CNN"
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    shutil.copy(run / "model_best.pth", downloads)
    (downloads / "config.json").write_text('{"unrelated": true}')
    (downloads / ".download.tmp").write_bytes(b"a browser's partial download")
    backup = tmp_path / "backup" / "orig"
    shutil.copytree(run, backup)
    before = {folder: files_of(folder) for folder in (downloads, backup, run, logs / "orig")}
    for source in (downloads / "model_best.pth", backup):
        train.main(["-r", str(source), "--epochs", "2"])
    assert {folder: files_of(folder) for folder in before} == before  # nothing written there
    runs = sorted(path.name for path in run.parent.iterdir())
    assert len(runs) == 3 and runs == sorted(path.name for path in logs.iterdir())  # bound


def test_printed_resume_commands_are_shell_quoted_and_say_torchrun_under_torchrun(monkeypatch):
    path = "saved/$(touch pwned)/my run/checkpoint-interrupted.pth"
    assert resume_command(path) == f"python train.py -r '{path}'"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command("run") == "torchrun --nproc_per_node=4 train.py -r run"


@pytest.mark.slow
def test_a_hand_edited_config_is_kept_aside_and_a_damaged_manifest_is_left_alone(tmp_path):
    import train

    (tmp_path / "c.json").write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))
    train.main(["-c", str(tmp_path / "c.json"), "--run-id", "r"])
    run = tmp_path / "saved/models/Digits_CNN/r"
    edited = json.loads((run / "config.json").read_text())
    edited["optimizer"]["args"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(edited))
    train.main(["-r", str(run), "--epochs", "2"])
    (kept,) = run.glob("config.json.edited-*")
    assert json.loads(kept.read_text()) == edited
    assert json.loads((run / "config.json").read_text())["optimizer"]["args"]["lr"] == 0.001
    log = (tmp_path / "saved/log/Digits_CNN/r/info.log").read_text()
    assert "differs from the config stored in checkpoint-epoch1.pth" in log
    assert len(json.loads((run / "manifest.json").read_text())["sessions"]) == 2

    (run / "manifest.json").write_text('{"sessions": [')  # torn: the folder cannot vouch for
    train.main(["-r", str(run), "--epochs", "3"])           # itself, so it is not written to
    assert (run / "manifest.json").read_text() == '{"sessions": [' and \
        not (run / "checkpoint-epoch3.pth").exists()
    assert len(list(run.parent.iterdir())) == 2  # the run went on in a new folder


def test_a_manifest_that_names_no_folder_is_foreign_so_a_copy_of_an_old_run_branches_off(tmp_path):
    """A backup copy of a run whose manifest predates folder binding must not continue in the
    copy (its log folder would be the original's)."""
    from runs.manifest import made_here

    run = tmp_path / "models" / "Digits_CNN" / "old"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"sessions": [{"command": ["train.py"]}]}))
    assert not made_here(run)


def test_a_config_a_killed_resume_wrote_is_not_taken_for_a_hand_edit(tmp_path):
    """A resume killed (SIGKILL) after writing config.json with its --lr, before its first
    checkpoint: the next resume must not call that file edited by hand."""
    from runs.manifest import add_session
    from runs.run_folder import keep_edited_config

    run = tmp_path / "run"
    run.mkdir()
    stored = {"optimizer": {"args": {"lr": 0.001}}}
    killed_resume = {"optimizer": {"args": {"lr": 0.01}}}
    (run / "config.json").write_text(json.dumps(killed_resume))
    add_session(run, tmp_path / "log", {"command": ["train.py"], "config": killed_resume})
    assert keep_edited_config(run, stored) is None
    assert json.loads((run / "config.json").read_text()) == killed_resume
    (run / "config.json").write_text(json.dumps({"optimizer": {"args": {"lr": 0.5}}}))  # by hand
    assert keep_edited_config(run, stored).name.startswith("config.json.edited-")
