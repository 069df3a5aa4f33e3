"""Every call is authorized and audited (issue 4 §3, specs/calls.md §1 calls/history) - refused ones too."""

from __future__ import annotations

from pathlib import Path

import trio

from core.protocols.calls import MSG_PERMISSION_DENIED
from tests.calls_support import history, run_call, start_calls_server, v1_failure
from tests.conftest import api_key_for


async def test_permission_denied_call_is_audited(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    admin = await api_key_for(server, "ada", "admin")
    viewer = await api_key_for(server, "vic", "viewer")
    out = await run_call(server, viewer, "cat")
    assert out.result == v1_failure(MSG_PERMISSION_DENIED)
    rows = [(r["user"], r["call"], r["outcome"], r["message"]) for r in await history(server, admin)]
    assert ("vic", "cat", "failure", MSG_PERMISSION_DENIED) in rows, f"the refused call is not in the audit: {rows}"
    server.cancel_scope.cancel()


async def test_unknown_and_bad_param_calls_are_audited_without_params(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    admin = await api_key_for(server, "ada", "admin")
    await run_call(server, admin, "no-such-call", ["secret?"])
    await run_call(server, admin, "args", ["only-one"])
    rows = [(r["call"], r["params"], r["outcome"], r["message"]) for r in (await history(server, admin))[:2]]
    assert rows == [
        ("args", [], "failure", "invalid number of parameters"),
        ("no-such-call", [], "failure", "unknown action call"),
    ]
    server.cancel_scope.cancel()


async def test_anonymous_refusals_are_logged_not_stored(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    admin = await api_key_for(server, "ada", "admin")
    await run_call(server, None, "no-such-call")
    await run_call(server, None, "info")
    assert [r for r in await history(server, admin) if r["user"] == ""] == []
    server.cancel_scope.cancel()
