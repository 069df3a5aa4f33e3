"""The Database gateway: reads on worker threads from a small pool, every write through one writer connection."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import sqlite_utils
import trio

from core.errors import NotADatabaseError, StorageError
from storage.migrations import MIGRATIONS, apply_migrations

WAL_SWITCH_RETRY_SECONDS = 0.01
T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"
DB_FILENAME = "hearth.db"
LatencyObserver = Callable[[str, float], None]


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
        create_private(path)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(readers)
        self._idle_readers: list[sqlite_utils.Database] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self._observer: LatencyObserver | None = None
        self.last_latency_seconds = 0.0
        self._writer = self._connect(read_only=False)
        try:
            self._migrate()
        except BaseException:
            self._writer.conn.close()
            raise

    def _migrate(self) -> None:
        try:
            check_schema_version(self.path, schema_version(self._writer.conn))
            apply_migrations(self._writer)
        except sqlite3.DatabaseError as e:
            raise _storage_error(self.path, e) from None

    def set_latency_observer(self, observer: LatencyObserver | None) -> None:
        """Call ``observer(op, seconds)`` after every async ``read``/``write`` (``op`` is "read" or "write")."""
        self._observer = observer

    def _observe(self, op: str, started: float) -> None:
        if self._observer is not None:
            self._observer(op, time.perf_counter() - started)

    def _connect(self, *, read_only: bool) -> sqlite_utils.Database:
        try:
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
        except sqlite3.Error as e:
            raise _storage_error(self.path, e) from None
        try:
            self._configure(conn, read_only=read_only)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise _storage_error(self.path, e) from None
            raise
        return sqlite_utils.Database(conn)

    def _configure(self, conn: sqlite3.Connection, *, read_only: bool) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            mode = self._switch_to_wal(conn)
            if mode != "wal":
                raise StorageError(f"cannot switch {self.path} to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
        if read_only:
            conn.execute("PRAGMA query_only = ON")

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, retried while another opener of a fresh file holds it: SQLite answers
        that pragma "database is locked" at once instead of waiting for the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(WAL_SWITCH_RETRY_SECONDS)

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` with a read-only connection on a worker thread."""
        started = time.perf_counter()
        try:
            async with self._read_limiter:
                return await trio.to_thread.run_sync(self._run_read, fn)
        finally:
            self._observe("read", started)

    async def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction on the writer; commit, or roll back on error."""
        started = time.perf_counter()
        try:
            async with self._write_limiter:
                return await trio.to_thread.run_sync(self._run_write, fn)
        finally:
            self._observe("write", started)

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
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
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
            self._give_back(conn)

    def _give_back(self, conn: sqlite_utils.Database) -> None:
        if conn.conn.in_transaction:
            conn.conn.execute("ROLLBACK")
        with self._pool_lock:
            if not self._closed:
                self._idle_readers.append(conn)
                return
        conn.conn.close()

    async def ping(self) -> float:
        """Read the schema page and return how long it took, in seconds; StorageError when the file fails us."""
        started = time.perf_counter()
        try:
            await self.read(lambda conn: conn.execute("SELECT count(*) FROM sqlite_master").fetchone())
        except sqlite3.Error as e:
            raise StorageError(f"database check failed: {e}") from None
        return time.perf_counter() - started

    def close(self) -> None:
        """Close every connection; closing twice is harmless."""
        if self._closed:
            return
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


def create_private(path: Path) -> None:
    """Create a missing database file with mode 0600 (SQLite gives its -wal and -shm the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"cannot create {path}: {e.strerror}") from None


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of the last migration applied to the file (``PRAGMA user_version``)."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def check_schema_version(path: Path, version: int) -> None:
    """Refuse a file written by a newer Hearth: its schema has migrations this code does not know."""
    if version > len(MIGRATIONS):
        raise StorageError(
            f"{path} has schema version {version}, newer than this Hearth knows ({len(MIGRATIONS)}); "
            "run a newer Hearth or restore a backup made by this version"
        )


def _storage_error(path: Path, e: sqlite3.Error) -> StorageError:
    if "not a database" in str(e) or "file is encrypted" in str(e):
        return NotADatabaseError(f"{path} is not a SQLite database")
    return StorageError(f"cannot open {path}: {e}")
