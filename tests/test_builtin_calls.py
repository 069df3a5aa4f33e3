"""The built-in calls info, backup and prune, run over the call socket against a real server."""

from __future__ import annotations

import sqlite3
import tarfile
from pathlib import Path

import trio

from core.principals import Principal
from core.systems import SERVER, WORKSPACE, SystemInfo
from storage import audit as audit_log
from storage import call_history
from storage.audit import AuditEntry
from tests.calls_support import run_call, start_calls_server
from tests.conftest import api_key_for

SUCCESS = b'{"success":true}'


async def test_info_prints_key_value_lines(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    out = await run_call(server, await api_key_for(server, "vic", "viewer"), "info")
    keys = [line.split(": ", 1)[0] for line in out.texts]
    assert keys == ["version", "role", "uptime_seconds", "workspaces", "servers", "actions_running"]
    assert out.binaries == [SUCCESS]


async def test_info_counts_the_workspaces_and_servers_the_caller_may_see(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)

    async def workspaces(principal: Principal) -> list[SystemInfo]:
        mine = [SystemInfo(kind=WORKSPACE, id=f"{principal.name}-{i}", name="w") for i in range(3)]
        return mine if principal.name == "vic" else mine[:1]

    async def servers(principal: Principal) -> list[SystemInfo]:
        return [SystemInfo(kind=SERVER, id="s1", name="box")]

    server.services.systems.register(WORKSPACE, workspaces)
    server.services.systems.register(SERVER, servers)
    for name, expected in (("vic", "3"), ("eve", "1")):
        out = await run_call(server, await api_key_for(server, name, "viewer"), "info")
        counts = dict(line.split(": ", 1) for line in out.texts)
        assert (counts["workspaces"], counts["servers"]) == (expected, "1")


async def test_backup_writes_an_archive_with_a_checked_database(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    out = await run_call(server, await api_key_for(server, "ada", "admin"), "backup")
    assert out.binaries == [SUCCESS]
    archive = Path(out.texts[-1])
    assert archive.parent == data_dir / "backups" and archive.name.endswith(".tar.gz")
    mode, names, check, users = await trio.to_thread.run_sync(inspect_archive, archive, data_dir.parent / "restored")
    assert mode & 0o077 == 0
    assert {"hearth.db", "jwt.secret"} <= set(names) and "hearth.lock" not in names
    assert check == ("ok",) and users == ("ada",)


def inspect_archive(archive: Path, into: Path) -> tuple[int, list[str], object, object]:
    """The archive's mode and names, and the integrity check and a user of the database it holds."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extract("hearth.db", into, filter="data")
    restored = sqlite3.connect(into / "hearth.db")
    try:
        check = restored.execute("PRAGMA integrity_check").fetchone()
        users = restored.execute("SELECT name FROM users WHERE name = 'ada'").fetchone()
    finally:
        restored.close()
    return archive.stat().st_mode, names, check, users


async def test_backup_is_for_admins_only(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    out = await run_call(server, await api_key_for(server, "mia", "member"), "backup")
    assert out.binaries == [b'{"success":false,"message":"permission denied"}']
    assert not (data_dir / "backups").exists()


async def test_prune_removes_audit_and_call_rows_past_retention(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    db = server.services.db
    old, recent = "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"
    for at in (old, recent):
        await audit_log.record(db, AuditEntry(at=at, principal="user:x", action="test.mark"))
    call_id = await call_history.begin(db, principal="user:x", user="x", call="info", params=[], started_at=old)
    await call_history.finish(db, call_id, ended_at=old, success=True, message="", bytes_in=0, bytes_out=0)
    out = await run_call(server, await api_key_for(server, "ada", "admin"), "prune")
    assert out.binaries == [SUCCESS]
    assert out.texts[1] == "audit rows older than 365 days removed: 1"
    assert out.texts[2] == "call records older than 365 days removed: 1"
    kept = await audit_log.recent(db, action="test.mark")
    assert [e.at for e in kept] == [recent]
