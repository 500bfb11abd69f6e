"""SIGINT / SIGTERM / SIGHUP as a request to stop after the current step, not as an exception
anywhere (SIGHUP: the terminal or SSH session that started the run was closed).

While training, `StopSignals` replaces the handlers of these signals with one that only records
the signal; the loop polls `requested` after each optimizer step, saves a resumable checkpoint
and exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
Further signals while it saves are noted and ignored, so a second Ctrl-C cannot tear a
checkpoint in half (the write is atomic anyway). Only SIGKILL stops it at once.
"""
import os
import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))  # no SIGHUP on Windows


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving; the CLI exits with `exit_code`."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """A context in which SIGINT, SIGTERM and SIGHUP set `received` instead of stopping the
    process.

    Handlers can only be installed from the main thread; elsewhere (a trainer driven from
    another thread) the context changes nothing and the default behaviour stays. Entered again
    while active (train.py around opening the run folder, the trainer around its loop) it keeps
    what was received.

    A process torchrun started also stops when torchrun's agent is gone (killed with SIGKILL,
    it cannot pass a signal on): its parent process changes, and that counts as a SIGTERM —
    the workers save and end instead of training on as orphans.
    """

    def __init__(self):
        # the first stop signal that came in (set by the handler: a plain attribute, read
        # after every optimizer step); `poll()` also notices a lost torchrun agent
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._depth = 0
        # torchrun's agent while active under torchrun (`poll` notices it gone), else None
        self.parent: int | None = None

    def poll(self) -> int | None:
        """The first stop signal that came in, or SIGTERM for a lost torchrun agent."""
        if self.received is None and self.parent is not None and \
                os.getppid() != self.parent:
            self.parent = None
            self.received = signal.SIGTERM
            os.write(2, f"\n{process_prefix()}torchrun's agent is gone: finishing the current "
                        f"step and saving a checkpoint.\n".encode())
        return self.received

    @property
    def requested(self) -> bool:
        return self.poll() is not None

    def __enter__(self) -> "StopSignals":
        self._depth += 1
        if self._depth > 1:
            return self
        self.received = None  # a trainer may train again after a stop (a notebook, a sweep)
        self.parent = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:  # nohup: SIGHUP stays ignored
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self.parent = None

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            note = "finishing the current step and saving a checkpoint"
        else:
            note = "already stopping; the checkpoint is being saved (SIGKILL stops at once, " \
                   "losing the steps since the last checkpoint)"
        # os.write, not logging or print: a handler may run in the middle of either
        os.write(2, f"\n{process_prefix()}{signal.Signals(signum).name} received: {note}.\n"
                 .encode())


def ignore_stop_signals() -> None:
    """For a process whose work is done and saved: a stop signal while the interpreter shuts
    down (slowly, with torch loaded) would only turn the finished run's exit code into 130 or
    143 without a word. SIGKILL still ends it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopWithParent:
    """A `preexec_fn` for a child process that must not outlive the process starting it (a
    sweep's trial: a sweep killed with SIGKILL cannot pass a signal on). On Linux the kernel
    sends the child SIGTERM when its parent ends — it then saves and stops as on any SIGTERM
    (torchrun passes it on to its workers); elsewhere it does nothing. A parent already gone
    while the child starts counts the same."""

    def __init__(self):
        import ctypes
        import sys

        self.parent = os.getpid()  # taken in the parent, before the fork
        self._prctl = None  # looked up here: between fork and exec the child only calls it
        if sys.platform.startswith("linux"):
            try:
                self._prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass

    def __call__(self) -> None:
        if self._prctl is None:
            return
        self._prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != self.parent:  # it ended before the request was made
            os.kill(os.getpid(), signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class WorkerInit:
    """A DataLoader `worker_init_fn` that leaves the stop signals to the main process, then
    runs the user's own `worker_init_fn`, if any.

    A terminal's Ctrl-C reaches every process of the group; a worker that died of it would make
    the main process fail while it finishes its step. Workers end when the main process does.
    """

    def __init__(self, then=None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def process_prefix() -> str:
    """`[rank 1] ` in the processes torchrun started besides rank 0, else nothing (read from
    the environment: it works before the process group exists, and in signal handlers)."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if os.environ.get("WORLD_SIZE", "1") != "1" and rank != "0" else ""
