"""Samples per second: over an epoch, and since the last log step."""
import time


class Throughput:
    """Counts the samples trained on since `start()`; `since_last_read()` is the rate since the
    previous call (a log step), `epoch_stats()` the epoch's."""

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.started = time.monotonic()
        self.samples = 0
        self._last = (self.started, 0)  # (time, samples) at the last read

    def add(self, samples: int) -> None:
        self.samples += samples

    def since_last_read(self) -> float | None:
        now = time.monotonic()
        speed = (self.samples - self._last[1]) / (now - self._last[0]) \
            if now > self._last[0] else None
        self._last = (now, self.samples)
        return speed

    def epoch_stats(self) -> dict[str, float]:
        """`{"samples_per_s": ...}` since `start()`; empty before any sample."""
        seconds = time.monotonic() - self.started
        return {"samples_per_s": self.samples / seconds} if self.samples and seconds > 0 else {}
