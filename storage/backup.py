"""Online backup and offline restore of the database file: SQLite's backup API, integrity checks, atomic renames."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from core.errors import ConfigError, NotADatabaseError, StorageError
from storage.database import DB_FILENAME, Database, check_is_sqlite, check_schema_version, schema_version
from storage.lock import ServerLock

BUSY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Restored:
    """What ``restore_database`` did: the live database path and where the previous one was kept."""

    database: Path
    previous: Path | None


def backup_database(source: Path, target: Path) -> Path:
    """Copy the database at ``source`` to ``target`` while a server may be writing to it; return the file written.

    One backup step copies every page inside one read transaction, so the copy is a consistent snapshot;
    in WAL mode the server's writers carry on meanwhile. The copy goes to a temporary file next to the
    target, passes ``PRAGMA integrity_check``, is fsynced and then renamed over the target.
    ``target`` may be a directory: the file is then named ``hearth-<UTC timestamp>-<random>.db`` inside it.
    """
    if not source.is_file():
        raise StorageError(f"no database at {source}")
    if target.resolve() == source.resolve():
        raise StorageError(f"{target} is the live database itself: back it up to another file or a directory")
    check_is_sqlite(source)
    with _open(source, "rw") as src:
        return snapshot_into(src, target)


def snapshot_live(db: Database, target: Path) -> Path:
    """Snapshot a database that is open (and maybe serving) into ``target`` (or a timestamped file in it, if a
    directory) with SQLite's online backup API, on one of its reader connections: verified, mode 0600, renamed
    into place. Blocking (run it on a worker thread); the server's writers carry on meanwhile."""
    return db.read_sync(lambda conn: snapshot_into(conn.conn, target))


def snapshot_into(src: sqlite3.Connection, target: Path) -> Path:
    """Copy the database behind ``src`` to ``target`` (a file, or a directory to name one in); verified, atomic."""
    target = _backup_target(target)
    with _temporary_file(target) as tmp:
        _copy(src, tmp)
        verify_database(tmp)
        _commit_file(tmp, target)
    return target


def restore_database(data_dir: Path, source: Path) -> Restored:
    """Replace ``data_dir``'s database with the backup at ``source``; refused while a server holds the lock.

    The server lock is held for the whole restore, so a server cannot start halfway. The previous database
    (and its WAL, which may hold committed transactions) is kept as ``hearth.db.bak-<timestamp>``; the stale
    ``-shm`` is removed. Migrations newer than the backup are applied when the database is next opened.
    """
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("data_dir", f"cannot create {data_dir}: {e.strerror}") from None
    lock = ServerLock(data_dir)
    lock.acquire()
    try:
        return _restore_locked(data_dir, source)
    finally:
        lock.release()


def _restore_locked(data_dir: Path, source: Path) -> Restored:
    if not source.is_file():
        raise StorageError(f"no backup file at {source}")
    verify_restorable(source)
    database = data_dir / DB_FILENAME
    with _temporary_file(database) as tmp:
        with _open(source, "ro") as src:
            _copy(src, tmp)
        verify_database(tmp)
        previous = _move_aside(database)
        _commit_file(tmp, database)
    return Restored(database, previous)


def verify_database(path: Path) -> int:
    """Check that ``path`` is SQLite and passes ``PRAGMA integrity_check``; return its schema version."""
    check_is_sqlite(path)
    try:
        with _open(path, "ro") as conn:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check(20)")]
            version = schema_version(conn)
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e) or "file is encrypted" in str(e):
            raise NotADatabaseError(f"{path} is not a SQLite database") from None
        raise StorageError(f"{path} failed the integrity check: {e}") from None
    if problems != ["ok"]:
        raise StorageError(f"{path} failed the integrity check: {'; '.join(problems[:3])}")
    return version


def verify_restorable(path: Path) -> None:
    """A backup may be restored when it is intact, made by Hearth, and not newer than this code."""
    version = verify_database(path)
    if version == 0:
        raise StorageError(f"{path} is not a Hearth database (no schema version)")
    check_schema_version(path, version)


def _backup_target(target: Path) -> Path:
    if target.is_dir():  # a random part: two backups in the same second must not share a name
        return target / f"hearth-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}.db"
    if not target.parent.is_dir():
        raise StorageError(f"directory {target.parent} does not exist")
    return target


@contextlib.contextmanager
def _open(path: Path, mode: str) -> Iterator[sqlite3.Connection]:
    """A connection that never creates ``path``; ``mode`` is ``ro`` or ``rw``."""
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    except sqlite3.Error as e:
        raise StorageError(f"cannot open {path}: {e}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def _copy(src: sqlite3.Connection, target: Path) -> None:
    """Every page in one step (one read transaction: a consistent snapshot); the copy is a single file."""
    dest = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dest, pages=-1)
        dest.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as e:
        raise StorageError(f"backup to {target} failed: {e}") from None
    finally:
        dest.close()


@contextlib.contextmanager
def _temporary_file(target: Path) -> Iterator[Path]:
    """An empty private file (mode 0600) beside ``target``, removed unless it was renamed into place."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    except OSError as e:
        raise StorageError(f"cannot write {tmp}: {e.strerror}") from None
    try:
        yield tmp
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


def _move_aside(database: Path) -> Path | None:
    """Rename the current database and its WAL to ``<name>.bak-<timestamp>``; drop the stale shared memory."""
    shm = database.with_name(database.name + "-shm")
    wal = database.with_name(database.name + "-wal")
    previous = None
    if database.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        previous = _free_name(database.with_name(f"{database.name}.bak-{stamp}"))
        os.replace(database, previous)
        if wal.exists():
            os.replace(wal, previous.with_name(previous.name + "-wal"))
    wal.unlink(missing_ok=True)
    shm.unlink(missing_ok=True)
    return previous


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def _commit_file(tmp: Path, target: Path) -> None:
    """fsync the file, rename it over ``target``, fsync the directory: durable and all-or-nothing."""
    _fsync(tmp)
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
