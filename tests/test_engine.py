"""step/engine.py: what a NaN or infinite loss does to a run (trainer.nan_policy)."""
import pytest

from tests.conftest import build
from utils.errors import TrainingDiverged


def test_an_epoch_whose_every_step_is_skipped_stops_the_run_without_saving(tmp_path):
    trainer = build(tmp_path, nan_policy="skip", epochs=2, len_epoch=3)
    trainer.config.make_run_dirs()
    trainer.model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"^every step of epoch 1 \(3\) had a NaN or "
                                               r"infinite loss and was skipped"):
        trainer.train()
    assert not list(trainer.checkpoint_dir.glob("*.pth"))


def test_some_skipped_steps_leave_the_run_going(tmp_path):
    trainer = build(tmp_path, nan_policy="skip", epochs=1, len_epoch=3)
    trainer.config.make_run_dirs()
    calls = []

    def nan_once(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 1 else output
    trainer.model.register_forward_hook(nan_once)
    trainer.train()
    assert trainer.global_step == 3 and (trainer.checkpoint_dir / "checkpoint-epoch1.pth").exists()
