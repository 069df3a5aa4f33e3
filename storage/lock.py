"""The data directory's server lock: a running server holds it, so restore can refuse to run under it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from core.errors import DatabaseInUseError

LOCK_NAME = "hearth.lock"


class ServerLock:
    """An exclusive ``flock`` on ``<data_dir>/hearth.lock``, released when the process ends (even by kill -9)."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUseError(f"a Hearth server is running on {self._path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
