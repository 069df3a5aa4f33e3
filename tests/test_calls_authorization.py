"""Who learns what (specs/calls.md §2) and the fixed result messages on every path."""

from __future__ import annotations

import trio

from core.protocols.calls import MSG_CANCELLED, MSG_PERMISSION_DENIED
from tests.calls_support import call_frame, collect, open_call_socket, read_until, run_call
from tests.conftest import RunningServer, api_key_for


async def test_anonymous_caller_is_denied_whatever_the_params(calls_server: RunningServer) -> None:
    """§2: an unauthenticated upgrade is accepted and "the call then fails with permission denied"."""
    out = await run_call(calls_server, None, "info", ["unexpected"])
    assert out.result == {"success": False, "message": MSG_PERMISSION_DENIED}


async def test_viewer_cannot_probe_params_of_an_admin_call(calls_server: RunningServer) -> None:
    """A viewer who may not run ``args`` (admin) learns its param count from the answer."""
    viewer = await api_key_for(calls_server, "vic", "viewer")
    out = await run_call(calls_server, viewer, "args", ["only-one"])
    assert out.result == {"success": False, "message": MSG_PERMISSION_DENIED}


async def test_call_cancelled_through_the_actions_api_says_cancelled(calls_server: RunningServer) -> None:
    """§2 table: the message texts are fixed; a cancel is ``cancelled`` (not ``cancelled by api_key:...``)."""
    admin = await api_key_for(calls_server, "ada", "admin")
    with trio.fail_after(20):
        async with open_call_socket(calls_server, admin) as ws:
            await ws.send_message(call_frame("ready_cat"))
            await read_until(ws, "ready")
            async with calls_server.client() as client:
                listed = (await client.get("/api/v1/actions", headers={"X-API-Key": admin})).json()["actions"]
                (action,) = [a for a in listed if a["name"] == "call:ready_cat" and a["state"] == "running"]
                cancelled = await client.post(f"/api/v1/actions/{action['id']}/cancel", headers={"X-API-Key": admin})
            assert cancelled.status_code == 202
            out = await collect(ws)
    assert out.result == {"success": False, "message": MSG_CANCELLED}
