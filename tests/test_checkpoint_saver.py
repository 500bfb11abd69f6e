"""base/checkpoint_saver.py: which checkpoint files a run writes, and when."""
import os

import pytest

from base.checkpoint_saver import CheckpointSaver
from base.run_folder import INTERRUPTED_NAME
from utils.checkpoint import FORMAT_VERSION, load_checkpoint


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


def test_the_best_is_a_link_to_the_epoch_file_or_a_file_of_its_own(tmp_path):
    saver = CheckpointSaver(lambda: tmp_path)
    saved = saver.save_epoch(1, state(1))
    saver.save_best(saved, state(1))
    assert os.path.samefile(saved, saver.best_path)
    saver.save_best(None, state(2))  # an improving epoch without an epoch file
    assert not os.path.samefile(saved, saver.best_path)
    assert load_checkpoint(saver.best_path)["epoch"] == 2 and load_checkpoint(saved)["epoch"] == 1


def test_the_state_is_built_only_when_a_file_is_written(tmp_path):
    built = []
    saver = CheckpointSaver(lambda: tmp_path)
    saved = saver.save_epoch(1, state(1))
    saver.save_best(saved, lambda: built.append(1) or state(1)())
    assert built == []  # linked: nothing to build


def test_leftover_temp_files_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".checkpoint-epoch2.pth.1234.tmp").write_bytes(b"half")
    CheckpointSaver(lambda: tmp_path).remove_leftovers()
    assert names(tmp_path) == []
