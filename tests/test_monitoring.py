"""runs/monitoring.py: the best epoch of the monitored value, saved with each checkpoint."""
from base.settings import Monitor
from runs.monitoring import BestTracker


def test_the_best_value_its_epoch_and_the_epochs_without_improvement():
    best = BestTracker(Monitor.parse("min val_loss"))
    assert [best.update({"val_loss": value}, epoch) for epoch, value in
            enumerate([3.0, 2.0, 2.0, 2.5], start=1)] == [True, True, False, False]
    assert (best.value, best.epoch, best.not_improved_count) == (2.0, 2, 2)
    assert best.log == {"val_loss": 2.0}


def test_it_saves_itself_and_reads_checkpoints_written_before_its_keys_existed():
    best = BestTracker(Monitor.parse("max val_accuracy"))
    best.update({"val_accuracy": 0.9, "loss": 0.3}, 4)
    again = BestTracker(Monitor.parse("max val_accuracy"))
    again.load_state_dict(best.state_dict())
    assert again.state_dict() == best.state_dict()
    old = BestTracker(Monitor.parse("max val_accuracy"))
    old.load_state_dict({"monitor_best": 0.8})
    assert (old.value, old.epoch, old.log, old.not_improved_count) == (0.8, None, {}, 0)


def test_off_never_improves():
    assert not BestTracker(Monitor.parse("off")).update({"loss": 0.0}, 1)
