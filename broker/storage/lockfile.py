"""One broker per SQLite file: an exclusive `flock` on `<db>.lock`, beside the database,
held for as long as the store is open.

The lock belongs to the open file, so the OS releases it when the process ends, however
it ends: a broker killed with SIGKILL leaves no stale lock. The holder writes its pid into
the file, so that a second broker can name it; the file itself stays (an unlocked one
means nothing).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from broker.errors import StorageError


class StoreLock:
    """The exclusive lock on one database file; `release()` (idempotent) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db_path: str | Path) -> StoreLock:
        """Take the lock of the database at `db_path`, or raise StorageError naming the
        file and the process that holds it, if known. Never waits."""
        path = lock_path(db_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open the database {db_path}: cannot create its lock file {path}:"
                f" {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"cannot lock {path}: {exc.strerror}") from None
            who = f"process {holder}" if holder else "another process"
            raise StorageError(
                f"the database {db_path} is in use by {who} (lock file {path});"
                " one broker per database file"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for messages; the lock is what counts
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def lock_path(db_path: str | Path) -> Path:
    """The lock file of the database at `db_path`: `<db>.lock`, beside it."""
    path = Path(db_path)
    return path.with_name(path.name + ".lock")


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None
