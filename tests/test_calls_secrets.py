"""Secret params of a call (specs/calls.md §3 ``secret_params``) must not be echoed, logged or stored."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.calls_support import collect, command_settings, open_call_socket, read_until, start_calls_server
from tests.conftest import RunningServer, api_key_for

SECRET = "hunter2-very-secret"


@pytest.fixture
async def secret_server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    commands: dict[str, Any] = command_settings()
    commands["secret_cat"] = {
        "argv": ["sh", "-c", "echo ready; exec cat", "sh"],
        "params": ["password"],
        "role": "member",
        "secret_params": ["password"],
    }
    server = await start_calls_server(nursery, data_dir, commands=commands)
    yield server
    server.cancel_scope.cancel()


async def _while_secret_call_runs(server: RunningServer, member: str, probe: Any) -> Any:
    """Run ``secret_cat`` with the secret param; call ``probe()`` while it runs; end it with the close signal."""
    with trio.fail_after(20):
        async with open_call_socket(server, member) as ws:
            await ws.send_message(b'{"call":"secret_cat","params":["' + SECRET.encode() + b'"]}')
            await read_until(ws, "ready")
            seen = await probe()
            await ws.send_message(b'{"signal":"close"}')
            transcript = await collect(ws)
    assert transcript.result == {"success": True}
    return seen


async def test_secret_param_not_shown_by_the_actions_api(secret_server: RunningServer) -> None:
    admin = await api_key_for(secret_server, "ada", "admin")
    member = await api_key_for(secret_server, "mo", "member")

    async def list_actions() -> str:
        async with secret_server.client() as client:
            response = await client.get("/api/v1/actions", headers={"X-API-Key": admin})
        assert response.status_code == 200
        return response.text

    body = await _while_secret_call_runs(secret_server, member, list_actions)
    assert "call:secret_cat" in body
    assert SECRET not in body, "an admin reads the member's secret param in GET /api/v1/actions (argv)"


async def test_secret_param_not_logged(secret_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    member = await api_key_for(secret_server, "mo", "member")

    async def nothing() -> None:
        return None

    await _while_secret_call_runs(secret_server, member, nothing)
    leaking = [r.name + ": " + r.getMessage() for r in caplog.records if SECRET in repr(r.__dict__)]
    assert leaking == [], f"log records carry the secret param: {leaking}"


async def test_secret_param_not_stored_in_the_database(secret_server: RunningServer, data_dir: Path) -> None:
    member = await api_key_for(secret_server, "mo", "member")

    async def read_process_groups() -> list[Any]:
        db = sqlite3.connect(data_dir / "hearth.db")
        try:
            return db.execute("SELECT argv FROM process_groups").fetchall()
        finally:
            db.close()

    rows = await _while_secret_call_runs(secret_server, member, read_process_groups)
    assert rows, "the running call has a process group row"
    assert not any(SECRET in str(row) for row in rows), f"process_groups stores the secret: {rows}"
