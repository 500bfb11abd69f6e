"""The best epoch so far of the monitored value, and how long it has not improved."""
from base.settings import Monitor


class BestTracker:
    """Tracks `monitor` across epochs: its best value, that epoch and all of its logged values,
    and the epochs since (for early stopping). Saves itself into checkpoints."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self.value = monitor.worst  # the best value so far
        self.epoch: int | None = None  # its epoch
        self.log: dict[str, float] = {}  # every value logged in that epoch
        self.not_improved_count = 0

    def update(self, log: dict[str, float], epoch: int) -> bool:
        """Whether this epoch improved the monitored value; counts the epochs it did not."""
        if not self.monitor.enabled:
            return False
        value = log[self.monitor.metric]
        if self.monitor.improved(value, self.value):
            self.value, self.epoch, self.log = value, epoch, dict(log)
            self.not_improved_count = 0
            return True
        self.not_improved_count += 1
        return False

    def state_dict(self) -> dict:
        return {"monitor_best": self.value, "not_improved_count": self.not_improved_count,
                "best_epoch": self.epoch, "best_log": self.log}

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint; one written before a key existed lacks it."""
        self.value = state.get("monitor_best", self.monitor.worst)
        self.not_improved_count = state.get("not_improved_count", 0)
        self.epoch = state.get("best_epoch")
        self.log = state.get("best_log") or {}
