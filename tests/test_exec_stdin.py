"""The exec websocket's input: a client that vanishes cancels its action, also behind input the process never
reads (then once the queue has stayed full for ``actions.stdin_stall_seconds``)."""

from __future__ import annotations

import struct
from pathlib import Path

import trio

from core.actions import ActionResult
from handlers.hot_ws import STDIN_STALLED
from tests.conftest import RunningServer, make_settings, start_server
from tests.test_hot_ws import api_key, bearer, only_action, upgrade_request


def masked_binary_frame(payload: bytes) -> bytes:
    """A client BINARY frame (masked with a zero key, which leaves the payload as is)."""
    return b"\x82\xff" + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


async def send_then_vanish(server: RunningServer, frames: int) -> ActionResult | None:
    """Exec ``sleep 60`` (it never reads stdin), send ``frames`` of 512 KiB, drop the TCP connection; the
    action's result, or None when it is still running 15 s later."""
    key = await api_key(server)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(upgrade_request("/api/v1/actions/exec?argv=sleep&argv=60", bearer(key)))
    with trio.fail_after(10):
        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 101 ")
    with trio.move_on_after(3):  # past the pipe and the queue the server stops reading
        for _ in range(frames):
            await stream.send_all(masked_binary_frame(b"x" * 512 * 1024))
    await stream.aclose()
    action = await only_action(server)
    result = None
    with trio.move_on_after(15):
        result = await action.wait_result()
    action.cancel("test cleanup")
    return result


async def test_a_client_gone_after_a_little_input_cancels_at_once(server: RunningServer) -> None:
    result = await send_then_vanish(server, frames=1)  # queued: the reader goes on and sees the end
    assert result is not None and result.cancelled
    assert result.error == "the websocket closed"


async def test_a_client_gone_behind_unread_input_cancels_after_the_stall(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_settings(data_dir, actions={"stdin_stall_seconds": 1.0}))
        result = await send_then_vanish(server, frames=6)  # 3 MiB: more than the pipe and the 1 MiB queue
        server.cancel_scope.cancel()
    assert result is not None and result.cancelled
    assert result.error == STDIN_STALLED  # the reader was stuck behind the full queue until the stall
