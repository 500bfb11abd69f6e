"""One writer per run folder: an exclusive lock the operating system holds for the process.

`RunLock.acquire` takes `fcntl.flock` on `<run folder>/.writer.lock`; the kernel drops it when
the process ends, however it ends (SIGKILL, a crash, a power cut), so a lock is never stale. A
second writer — a resume of a folder whose run still trains, two resumes at once — gets one line
naming the holder (pid and host, written into the lock file) and writes nothing. Under torchrun
rank 0 holds it for the whole run. On a file system without `flock` (some network mounts)
locking is skipped with a warning.
"""
import errno
import logging
import os
import socket
from pathlib import Path

from runs.run_folder import remove_partial_writes
from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".writer.lock"


class RunLock:
    """The writer's lock on `folder`; `acquire` before writing anything there, and keep the
    object until the writing is done (the lock lives as long as its open file)."""

    def __init__(self, folder: Path, name: str = LOCK_NAME, busy: str | None = None):
        """`name`: the lock file's name in `folder`; another name locks something else there
        (a k-fold run's record beside its folds' run folders), and leaves temp files alone.
        `busy`: the line when another process holds it (`{holder}` in it names that one)."""
        self.folder = Path(folder)
        self.name = name
        self.busy = busy or (f"{self.folder}: another process is writing this run folder "
                             f"({{holder}}); wait for it to end, or resume from a copy of the "
                             f"checkpoint into a new run")
        self._file = None

    def acquire(self) -> list[Path]:
        """Take the lock or raise a `UserError` naming its holder. Then the temp files a
        killed writer of this run left are provably dead: they are removed and returned."""
        path = self.folder / self.name
        try:  # not truncated before it is ours; a link is never followed (nor written through)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            file = os.fdopen(fd, "a+", encoding="utf-8")
        except OSError as error:
            if error.errno == errno.ELOOP or path.is_symlink():
                raise UserError(f"{path}: is a symbolic link, not the run folder's lock file; "
                                f"the template does not write through it (remove the link)") \
                    from None
            raise UserError(f"{path}: cannot open the run folder's lock file "
                            f"({error.strerror})") from None
        if not self._lock(file):
            file.seek(0)
            holder = file.read().strip() or "a process that has not said which"
            file.close()
            raise UserError(self.busy.format(holder=holder))
        try:
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            file.flush()
        except OSError as error:  # a full disk or quota: the lock is ours, its note is not
            file.close()
            raise UserError(f"{path}: cannot write the run folder's lock file "
                            f"({error.strerror}); nothing else was written") from None
        self._file = file
        return remove_partial_writes(self.folder) if self.name == LOCK_NAME else []

    def _lock(self, file) -> bool:
        """Whether this process now holds the lock (True where flock does not exist)."""
        if fcntl is None:
            return True
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:  # ENOLCK / EOPNOTSUPP: a file system without flock
            logging.getLogger("train").warning("Warning: %s cannot be locked (%s); make sure no "
                                               "other process writes this run folder.",
                                               self.folder, error.strerror)
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
