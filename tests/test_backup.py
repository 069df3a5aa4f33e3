"""`hearth backup` while a server writes, and `hearth restore` with every refusal it owes."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils
import trio

from core.errors import DatabaseInUseError
from storage.backup import backup_database, snapshot_live
from storage.database import Database
from storage.lock import ServerLock
from storage.migrations import MIGRATIONS
from tests.conftest import RunningServer
from tests.test_storage import _DURABILITY_WRITER, ROOT, clean_env


def hearth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=clean_env()
    )


INSERT_AUDIT = "INSERT INTO audit_log (at, principal, action) VALUES (?, 'p', 'a')"


def make_database(path: Path, rows: list[str]) -> None:
    def insert(conn: sqlite_utils.Database) -> None:
        conn.conn.executemany(INSERT_AUDIT, [[row] for row in rows])

    db = Database(path)
    db.write_sync(insert)
    db.close()


def audit_rows(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT at FROM audit_log ORDER BY id")]
    finally:
        conn.close()


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def load_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        count: int = conn.execute("SELECT count(*) FROM audit_log WHERE principal = 'load'").fetchone()[0]
        return count
    finally:
        conn.close()


async def write_pairs(server: RunningServer, milestones: dict[int, trio.Event]) -> None:
    """Forever: two rows per transaction, so any consistent snapshot holds an even number of rows.
    ``milestones[n]`` is set once ``n`` transactions are committed."""

    for n in range(10**9):

        def pair(conn: sqlite_utils.Database, n: int = n) -> None:
            for half in ("a", "b"):
                conn.execute("INSERT INTO audit_log (at, principal, action) VALUES (?, 'load', ?)", [str(n), half])

        await server.services.db.write(pair)
        if n + 1 in milestones:
            milestones[n + 1].set()


async def test_backup_while_server_writes_is_consistent(server: RunningServer, tmp_path: Path) -> None:
    targets = [tmp_path / "one.db", tmp_path / "two.db"]
    milestones = {50: trio.Event(), 100: trio.Event()}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_pairs, server, milestones)
        for target, milestone in zip(targets, milestones.values(), strict=True):
            await milestone.wait()
            cmd = [sys.executable, "app.py", "backup", str(target), "--data-dir", str(server.data_dir)]
            result = await trio.run_process(cmd, cwd=ROOT, capture_stdout=True, capture_stderr=True, env=clean_env())
            assert result.stdout.decode().strip() == str(target.resolve()), result.stderr
        nursery.cancel_scope.cancel()
    for target in targets:
        assert pragma(target, "integrity_check") == "ok"
        assert pragma(target, "journal_mode") == "delete"
        count = load_rows(target)
        assert count >= 100 and count % 2 == 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_rows(targets[1]) > load_rows(targets[0])
    with pytest.raises(DatabaseInUseError):
        ServerLock(server.data_dir).acquire()


def test_backup_into_a_directory_names_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_database(data / "hearth.db", ["x"])
    (tmp_path / "backups").mkdir()
    result = hearth("backup", str(tmp_path / "backups"), "--data-dir", str(data))
    written = Path(result.stdout.strip())
    assert result.returncode == 0
    assert written.parent == (tmp_path / "backups").resolve()
    assert written.name.startswith("hearth-") and written.suffix == ".db"
    assert audit_rows(written) == ["x"]
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_backup_without_a_database_exits_1(tmp_path: Path) -> None:
    result = hearth("backup", str(tmp_path / "out.db"), "--data-dir", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"hearth: no database at {tmp_path / 'empty' / 'hearth.db'}"
    assert not (tmp_path / "out.db").exists()
    assert not (tmp_path / "empty").exists()


def test_backup_onto_the_live_database_is_refused(tmp_path: Path) -> None:
    make_database(tmp_path / "hearth.db", ["x"])
    result = hearth("backup", str(tmp_path / "hearth.db"), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "is the live database itself" in result.stderr
    assert audit_rows(tmp_path / "hearth.db") == ["x"]


def test_backup_into_a_missing_directory_exits_1(tmp_path: Path) -> None:
    make_database(tmp_path / "hearth.db", ["x"])
    result = hearth("backup", str(tmp_path / "nowhere" / "out.db"), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "does not exist" in result.stderr


async def test_restore_is_refused_while_a_server_runs(server: RunningServer, tmp_path: Path) -> None:
    backup = tmp_path / "backup.db"
    make_database(backup, ["from backup"])
    cmd = [sys.executable, "app.py", "restore", str(backup), "--data-dir", str(server.data_dir)]
    result = await trio.run_process(cmd, cwd=ROOT, capture_stderr=True, check=False, env=clean_env())
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"hearth: a Hearth server is running on {server.data_dir}"
    assert await server.services.db.ping() >= 0
    assert not list(server.data_dir.glob("hearth.db.bak-*"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text, not a database\n", "is not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4080, "is not a SQLite database"),
        (b"", "no schema version"),
    ],
)
def test_restore_refuses_a_file_that_is_not_a_hearth_database(tmp_path: Path, content: bytes, message: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_database(data / "hearth.db", ["live"])
    (tmp_path / "bad.db").write_bytes(content)
    result = hearth("restore", str(tmp_path / "bad.db"), "--data-dir", str(data))
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert audit_rows(data / "hearth.db") == ["live"]
    assert sorted(p.name for p in data.iterdir()) == ["hearth.db", "hearth.lock"]


def corrupt(path: Path) -> None:
    """Overwrite one page in the middle of an otherwise valid database."""
    db = sqlite_utils.Database(path)
    db.table("filler").insert_all({"n": n, "text": f"row {n} " * 20} for n in range(2000))
    db.table("filler").create_index(["text"])
    db.conn.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 4096 // 2 * 4096)
        f.write(b"\x00\x01garbage" * 400)


def test_restore_refuses_a_database_that_fails_integrity_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_database(tmp_path / "broken.db", ["backup"])
    corrupt(tmp_path / "broken.db")
    result = hearth("restore", str(tmp_path / "broken.db"), "--data-dir", str(data))
    assert result.returncode == 1
    assert "failed the integrity check" in result.stderr
    assert not (data / "hearth.db").exists()


def test_restore_refuses_a_backup_from_a_newer_hearth(tmp_path: Path) -> None:
    make_database(tmp_path / "new.db", ["x"])
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    result = hearth("restore", str(tmp_path / "new.db"), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert "newer than this Hearth knows" in result.stderr


def crash_with_wal(path: Path) -> None:
    """Leave ``path`` as a kill -9 leaves it: committed rows still in the -wal, a -shm beside it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DURABILITY_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _, _line in zip(range(20), proc.stdout, strict=False):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)
    proc.stdout.close()


def test_restore_keeps_the_old_database_and_its_wal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_database(data / "hearth.db", ["before backup"])
    backup_database(data / "hearth.db", tmp_path / "backup.db")
    crash_with_wal(data / "hearth.db")
    assert (data / "hearth.db-wal").exists() and (data / "hearth.db-shm").exists()
    result = hearth("restore", str(tmp_path / "backup.db"), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    (kept,) = data.glob("hearth.db.bak-*[0-9Z]")
    assert result.stdout.splitlines()[-1] == f"previous database kept as {kept.resolve()}"
    assert not (data / "hearth.db-wal").exists() and not (data / "hearth.db-shm").exists()
    assert audit_rows(data / "hearth.db") == ["before backup"]
    assert len(audit_rows(kept)) >= 21


def test_restore_of_an_older_schema_is_migrated_on_next_open(tmp_path: Path) -> None:
    old = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS[0](old)
    old.execute("PRAGMA user_version = 1")
    old.conn.close()
    data = tmp_path / "fresh"
    result = hearth("restore", str(tmp_path / "old.db"), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"restored {(tmp_path / 'old.db').resolve()} into {(data / 'hearth.db').resolve()}"
    assert pragma(data / "hearth.db", "user_version") == 1
    Database(data / "hearth.db").close()
    assert pragma(data / "hearth.db", "user_version") == len(MIGRATIONS)


def test_backup_then_restore_round_trips_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_database(data / "hearth.db", ["one", "two"])
    assert hearth("backup", str(tmp_path / "b.db"), "--data-dir", str(data)).returncode == 0
    make_database(data / "hearth.db", ["three"])
    assert hearth("restore", str(tmp_path / "b.db"), "--data-dir", str(data)).returncode == 0
    assert audit_rows(data / "hearth.db") == ["one", "two"]
    lock = ServerLock(data)
    lock.acquire()
    lock.release()


async def test_database_backup_to_a_directory_from_a_running_server(server: RunningServer, tmp_path: Path) -> None:
    await server.services.db.write(lambda c: c.execute(INSERT_AUDIT, ["in memory of the server"]))
    backups = tmp_path / "backups"
    await trio.Path(backups).mkdir()
    written = await trio.to_thread.run_sync(snapshot_live, server.services.db, backups)
    assert written.parent == backups and written.name.startswith("hearth-")
    assert "in memory of the server" in audit_rows(written)
    assert pragma(written, "integrity_check") == "ok"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert listing(backups) == [written.name]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_restore_into_a_data_dir_that_cannot_be_created_exits_2(tmp_path: Path) -> None:
    make_database(tmp_path / "b.db", ["x"])
    (tmp_path / "file").write_text("in the way")
    result = hearth("restore", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "file" / "data"))
    assert result.returncode == 2
    assert result.stderr.startswith("hearth: setting data_dir: cannot create")
    assert result.stderr.count("\n") == 1
