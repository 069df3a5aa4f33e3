"""The Database gateway: reads on worker threads from a small pool, every write through one writer connection."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import sqlite_utils
import trio

from core.errors import NotADatabaseError, StorageError
from storage.migrations import apply_migrations

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"


class Database:
    """Owns every SQLite connection of the process; nothing else opens the file.

    ``read(fn)`` runs ``fn(conn)`` on a worker thread with one of ``readers`` pooled read-only connections;
    ``write(fn)`` runs ``fn(conn)`` inside ``BEGIN IMMEDIATE`` on the single writer connection, serialized by a
    ``CapacityLimiter(1)``; the transaction commits before ``write`` returns, so an acknowledged write is durable.
    """

    def __init__(
        self,
        path: Path,
        *,
        readers: int = 4,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        check_is_sqlite(path)
        self._writer = self._connect(read_only=False)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(readers)
        self._idle_readers: list[sqlite_utils.Database] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self.last_latency_seconds = 0.0
        apply_migrations(self._writer)

    def _connect(self, *, read_only: bool) -> sqlite_utils.Database:
        try:
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not read_only:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StorageError(f"cannot switch {self.path} to WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            if read_only:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as e:
            raise _storage_error(self.path, e) from None
        return sqlite_utils.Database(conn)

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` with a read-only connection on a worker thread."""
        async with self._read_limiter:
            return await trio.to_thread.run_sync(self._run_read, fn)

    async def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction on the writer; commit, or roll back on error."""
        async with self._write_limiter:
            return await trio.to_thread.run_sync(self._run_write, fn)

    def read_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Blocking read for command-line tools that run without trio."""
        return self._run_read(fn)

    def write_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Blocking write for command-line tools that run without trio."""
        return self._run_write(fn)

    def _run_read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        with self._reader() as conn:
            return fn(conn)

    def _run_write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        if self._closed:
            raise StorageError("database is closed")
        started = time.perf_counter()
        conn = self._writer.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._writer)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.last_latency_seconds = time.perf_counter() - started
        return result

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite_utils.Database]:
        if self._closed:
            raise StorageError("database is closed")
        with self._pool_lock:
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = self._connect(read_only=True)
        try:
            yield conn
        finally:
            if conn.conn.in_transaction:
                conn.conn.execute("ROLLBACK")
            with self._pool_lock:
                self._idle_readers.append(conn)

    async def ping(self) -> float:
        """Run a trivial query and return how long it took, in seconds."""
        started = time.perf_counter()
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())
        return time.perf_counter() - started

    def backup_to(self, target: Path) -> None:
        """Copy the live database to ``target`` with SQLite's online backup API (safe while serving)."""
        dest = sqlite3.connect(target)
        try:
            with self._reader() as conn:
                conn.conn.backup(dest)
        finally:
            dest.close()

    def close(self) -> None:
        self._closed = True
        with self._pool_lock:
            readers, self._idle_readers = self._idle_readers, []
        for conn in readers:
            conn.conn.close()
        self._writer.conn.close()


def check_is_sqlite(path: Path) -> None:
    """Refuse a file that exists, is non-empty and does not start with SQLite's magic header."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise NotADatabaseError(f"{path} is not a SQLite database")


def _storage_error(path: Path, e: sqlite3.DatabaseError) -> StorageError:
    if "not a database" in str(e) or "file is encrypted" in str(e):
        return NotADatabaseError(f"{path} is not a SQLite database")
    return StorageError(f"cannot open {path}: {e}")
