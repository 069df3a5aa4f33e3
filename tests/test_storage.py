"""The storage gateway: migrations, WAL and foreign keys, concurrent reads, rollback, and kill -9 durability."""

from __future__ import annotations

import os
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlite_utils
import trio

from core.errors import NotADatabaseError, StorageError
from storage.database import Database
from storage.migrations import MIGRATIONS

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child Hearth: ours without any HEARTH_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(extra)
    return env


class ServeProcess:
    """``python app.py serve --port 0`` as a real child process, with its output read line by line."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "serve", "--port", "0", "--data-dir", str(data_dir), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env() if env is None else env,
        )
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._partial: dict[str, bytes] = {}
        self._eof: set[str] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 20) -> int:
        """Read output until the log line naming the chosen port; return the port."""
        for stream, line in self._lines(timeout):
            if stream == "stderr" and (match := LISTENING.search(line)):
                self.port = int(match.group(1))
                return self.port
        raise AssertionError(f"server never listened; stderr: {self.stderr_lines[-5:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig``, read what is left of the output, and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        for _ in self._lines(timeout):
            pass
        return self.proc.wait(timeout=timeout)

    def _lines(self, timeout: float) -> Iterator[tuple[str, str]]:
        """Yield ``(stream, line)`` as the child writes them, until both pipes close or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
                if pipe is not None and not pipe.closed and name not in self._eof:
                    sel.register(pipe.fileno(), selectors.EVENT_READ, name)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    yield from self._read_lines(sel, key.fd, key.data)

    def _read_lines(self, sel: selectors.BaseSelector, fd: int, name: str) -> Iterator[tuple[str, str]]:
        """Unbuffered reads (a buffered reader would hide lines from the selector), split into lines."""
        data = os.read(fd, 65536)
        if not data:
            sel.unregister(fd)
            self._eof.add(name)
        lines = (self._partial.get(name, b"") + data).split(b"\n")
        self._partial[name] = lines.pop() if data else b""
        for raw in lines if data else [p for p in lines if p]:
            text = raw.decode("utf-8", "replace")
            (self.stdout_lines if name == "stdout" else self.stderr_lines).append(text)
            yield name, text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def table_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    conn.close()
    return count


def insert_audit(conn: sqlite_utils.Database, n: int) -> None:
    conn.execute("INSERT INTO audit_log (at, principal, action) VALUES (?, 'test', 'write')", [str(n)])


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "hearth.db")
    yield database
    database.close()


def test_database_fresh_file_gets_every_migration(db: Database) -> None:
    version = db.read_sync(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    tables = db.read_sync(lambda c: set(c.table_names()))
    assert version == len(MIGRATIONS)
    assert {"users", "api_keys", "refresh_tokens", "process_groups", "audit_log"} <= tables


def test_database_uses_wal_and_foreign_keys_on_every_connection(db: Database) -> None:
    assert db.read_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert db.read_sync(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    assert db.write_sync(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1


def test_database_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    first = Database(path)
    first.write_sync(lambda c: insert_audit(c, 1))
    first.close()
    second = Database(path)
    try:
        assert second.read_sync(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
        assert second.read_sync(lambda c: c.execute("SELECT at FROM audit_log").fetchall()) == [("1",)]
    finally:
        second.close()


def test_database_older_schema_gets_the_missing_migrations(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    old = sqlite_utils.Database(path)
    MIGRATIONS[0](old)
    old.execute("PRAGMA user_version = 1")
    old.conn.close()
    db = Database(path)
    db.close()
    assert table_count(path, "audit_log") == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_database_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StorageError, match="newer than this Hearth knows"):
        Database(path)


def test_serve_refuses_newer_schema_with_one_line(tmp_path: Path) -> None:
    Database(tmp_path / "hearth.db").close()
    with sqlite3.connect(tmp_path / "hearth.db") as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    result = subprocess.run(
        [sys.executable, "app.py", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "has schema version 999, newer than this Hearth knows" in result.stderr


def test_serve_refuses_file_with_sqlite_header_but_garbage_pages(tmp_path: Path) -> None:
    (tmp_path / "hearth.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    result = subprocess.run(
        [sys.executable, "app.py", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"hearth: {tmp_path / 'hearth.db'} is not a SQLite database"


def test_database_text_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "hearth.db").write_text("not a database\n")
    with pytest.raises(NotADatabaseError):
        Database(tmp_path / "hearth.db")


async def test_database_reads_run_while_a_write_is_open(db: Database) -> None:
    inside, release = threading.Event(), threading.Event()

    def slow_write(conn: sqlite_utils.Database) -> None:
        insert_audit(conn, 1)
        inside.set()
        release.wait(timeout=10)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.write, slow_write)
            await trio.to_thread.run_sync(inside.wait, 10)
            during = [await db.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0])]
            during += [await db.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0])]
            release.set()
    after = await db.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    assert during == [0, 0]
    assert after == 1


async def test_database_failing_write_rolls_back(db: Database) -> None:
    def half_write(conn: sqlite_utils.Database) -> None:
        insert_audit(conn, 1)
        raise ValueError("half way")

    with pytest.raises(ValueError, match="half way"):
        await db.write(half_write)
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0]) == 0
    await db.write(lambda c: insert_audit(c, 2))
    assert await db.read(lambda c: c.execute("SELECT at FROM audit_log").fetchall()) == [("2",)]


async def test_database_constraint_violation_rolls_back_the_whole_transaction(db: Database) -> None:
    def two_inserts(conn: sqlite_utils.Database) -> None:
        insert_audit(conn, 1)
        conn.execute("INSERT INTO refresh_tokens (token_hash, user_id, issued_at, expires_at) VALUES ('h', 42, '', '')")

    with pytest.raises(sqlite3.IntegrityError):
        await db.write(two_inserts)
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0]) == 0


async def test_database_latency_observer_sees_reads_and_writes(db: Database) -> None:
    seen: list[tuple[str, float]] = []
    db.set_latency_observer(lambda op, seconds: seen.append((op, seconds)))
    await db.write(lambda c: insert_audit(c, 1))
    await db.read(lambda c: c.execute("SELECT 1").fetchone())
    assert [op for op, _ in seen] == ["write", "read"]
    assert all(seconds >= 0 for _, seconds in seen)


async def test_database_closed_fails_reads_writes_and_ping(tmp_path: Path) -> None:
    db = Database(tmp_path / "hearth.db")
    assert await db.ping() >= 0
    db.close()
    db.close()
    with pytest.raises(StorageError):
        await db.ping()
    with pytest.raises(StorageError, match="closed"):
        await db.write(lambda c: insert_audit(c, 1))


_DURABILITY_WRITER = """
import sys, trio
from pathlib import Path
from storage.database import Database

async def main() -> None:
    db = Database(Path(sys.argv[1]))
    for i in range(1_000_000):
        await db.write(lambda c, i=i: c.execute(
            "INSERT INTO audit_log (at, principal, action) VALUES (?, 'test', 'write')", [str(i)]))
        print(f"acknowledged {i}", flush=True)

trio.run(main)
"""


def test_kill_9_keeps_every_acknowledged_gateway_write(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DURABILITY_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = [line for _, line in zip(range(300), proc.stdout, strict=False)]
    os.kill(proc.pid, signal.SIGKILL)
    acknowledged += proc.stdout.readlines()
    proc.wait(timeout=20)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    numbers = {line.split()[1] for line in acknowledged if line.startswith("acknowledged ")}
    assert len(numbers) >= 300
    assert path.with_name("hearth.db-wal").exists()
    db = Database(path)
    try:
        stored = set(db.read_sync(lambda c: [r[0] for r in c.execute("SELECT at FROM audit_log")]))
    finally:
        db.close()
    assert numbers <= stored


def admin_api_key(lines: list[str]) -> str:
    """The admin API key printed once on first start."""
    (key,) = [line.split("API key:", 1)[1].strip() for line in lines if "API key:" in line]
    return key


def test_kill_9_server_keeps_every_acknowledged_http_write(tmp_path: Path, serve_processes: list[ServeProcess]) -> None:
    first = ServeProcess(tmp_path / "data")
    serve_processes.append(first)
    first.wait_listening()
    headers = {"X-API-Key": admin_api_key(first.stdout_lines)}
    acknowledged = []
    with httpx.Client(base_url=first.base_url, headers=headers, timeout=10) as client:
        for n in range(40):
            response = client.post("/api/v1/keys", json={"description": f"durable {n}"})
            assert response.status_code == 201, response.text
            acknowledged.append(response.json()["description"])
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = ServeProcess(tmp_path / "data")
    serve_processes.append(second)
    second.wait_listening()
    with httpx.Client(base_url=second.base_url, headers=headers, timeout=10) as client:
        listed = client.get("/api/v1/keys").json()["keys"]
    assert second.stop() == 0
    assert set(acknowledged) <= {k["description"] for k in listed}
    assert not [line for line in second.stdout_lines if "API key:" in line]


def open_together(path: Path, openers: int) -> list[BaseException]:
    """``openers`` threads open ``path`` at the same moment; what they raised."""
    barrier = threading.Barrier(openers)
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            Database(path).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


def test_processes_opening_a_fresh_file_together_migrate_it_once(tmp_path: Path) -> None:
    """A server and a ``hearth users`` command may open a new data directory at the same moment: each
    migration runs once (the version is read under the write lock), and every opener gets a usable database."""
    for attempt in range(5):  # bounded: a race needs a few tries to show
        path = tmp_path / f"fresh-{attempt}.db"
        assert open_together(path, 4) == []
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
