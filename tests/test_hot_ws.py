"""The hot websocket routes (exec and output attach) against a real server, with trio-websocket and websocat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
)

from core.actions import Action
from core.api_keys import NewKey
from core.auth import LOCAL_ADMIN
from core.errors import ActionNotFound
from tests.conftest import RunningServer, make_settings, start_server

PY = sys.executable
WEBSOCAT = shutil.which("websocat") or os.path.join(os.path.dirname(PY), "websocat")
Headers = list[tuple[bytes, bytes]]


@dataclass
class Closed:
    """What a client saw: the messages, then the close code and reason."""

    messages: list[str | bytes]
    code: int
    reason: str

    @property
    def result(self) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(self.reason)
        return decoded


async def api_key(server: RunningServer, user: str = "admin") -> str:
    return (await server.services.auth.keys.create(LOCAL_ADMIN, NewKey(user=user))).raw


async def member_key(server: RunningServer, name: str = "bob") -> str:
    await server.services.auth.create_user(LOCAL_ADMIN, name, "correct horse battery", "member")
    return await api_key(server, name)


def bearer(key: str) -> Headers:
    return [(b"Authorization", f"Bearer {key}".encode())]


def exec_url(server: RunningServer, *argv: str, framing: str = "lines") -> str:
    query = urlencode([*(("argv", a) for a in argv), ("framing", framing)])
    return f"{server.ws_url}/api/v1/actions/exec?{query}"


def output_url(server: RunningServer, action_id: str, framing: str = "lines") -> str:
    return f"{server.ws_url}/api/v1/actions/{action_id}/output?framing={framing}"


@asynccontextmanager
async def connect(url: str, headers: Headers) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, extra_headers=headers, connect_timeout=10, disconnect_timeout=5) as ws:
        try:
            yield ws
        finally:
            # trio-websocket 0.12's client never closes its TCP stream after a close the server started
            # (its aclose returns early once a close reason is set); close it so no socket is left to the GC.
            await ws._stream.aclose()


async def read_all(ws: WebSocketConnection) -> Closed:
    """Every message until the server closes (bounded by the test's timeout)."""
    messages: list[str | bytes] = []
    with trio.fail_after(20):
        while True:
            try:
                messages.append(await ws.get_message())
            except ConnectionClosed as e:
                assert e.reason is not None
                return Closed(messages, e.reason.code, e.reason.reason or "")


async def run_exec(server: RunningServer, key: str, *argv: str, framing: str = "lines") -> Closed:
    async with connect(exec_url(server, *argv, framing=framing), bearer(key)) as ws:
        return await read_all(ws)


def upgrade_request(target: str, headers: Headers) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name.decode()}: {value.decode()}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def upgrade_status(server: RunningServer, url: str, headers: Headers) -> tuple[int, bytes]:
    """Send an upgrade request by hand; the status and everything the server sent until it closed (or 101)."""
    target = url[len(server.ws_url) :]
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(upgrade_request(target, headers))
        answer = b""
        with trio.fail_after(10):
            while (chunk := await stream.receive_some(65536)) and not answer.startswith(b"HTTP/1.1 101 "):
                answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


async def refused(server: RunningServer, url: str, headers: Headers) -> int:
    status, answer = await upgrade_status(server, url, headers)
    assert status != 101
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["detail"]
    return status


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed grandchildren may wait for init to reap them)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def only_action(server: RunningServer) -> Action:
    (action,) = server.services.actions.list()
    return action


def python(code: str) -> list[str]:
    return [PY, "-c", code]


# -- exec: frames, results, stdin ------------------------------------------------------------------------


async def test_exec_lines_one_text_message_per_line(server: RunningServer) -> None:
    key = await api_key(server)
    code = (
        "import sys; sys.stdout.write('one\\ntwo\\r\\n\\nthree'); sys.stdout.flush(); "
        "sys.stdout.buffer.write(b'\\nbad \\xff byte\\n')"
    )
    closed = await run_exec(server, key, *python(code))
    assert closed.messages == ["one", "two", "", "three", "bad \ufffd byte"]
    assert closed.code == 1000
    assert closed.result == {"exit_code": 0}


async def test_exec_lines_keep_stdout_and_stderr_lines_whole(server: RunningServer) -> None:
    key = await api_key(server)
    code = "import sys; print('out-a', end='', flush=True); print('err', file=sys.stderr, flush=True); print('-b')"
    closed = await run_exec(server, key, *python(code))
    assert sorted(map(str, closed.messages)) == ["err", "out-a-b"]


async def test_exec_chunks_are_binary_messages_up_to_32k(server: RunningServer) -> None:
    key = await api_key(server)
    code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1024)"  # 256 KiB
    closed = await run_exec(server, key, *python(code), framing="chunks")
    assert all(isinstance(m, bytes) and 0 < len(m) <= 32 * 1024 for m in closed.messages)
    assert b"".join(m for m in closed.messages if isinstance(m, bytes)) == bytes(range(256)) * 1024
    assert closed.result == {"exit_code": 0}


async def test_exec_close_reason_carries_the_exit_code(server: RunningServer) -> None:
    closed = await run_exec(server, await api_key(server), "sh", "-c", "echo bye; exit 3")
    assert closed.messages == ["bye"]
    assert (closed.code, closed.result) == (1000, {"exit_code": 3})


async def test_exec_close_reason_carries_a_start_error(server: RunningServer) -> None:
    closed = await run_exec(server, await api_key(server), "/nonexistent/program")
    assert closed.code == 1000
    assert "error" in closed.result
    assert len(closed.reason.encode()) <= 123


async def test_exec_close_reason_carries_the_signal(server: RunningServer) -> None:
    closed = await run_exec(server, await api_key(server), "sh", "-c", "kill -9 $$")
    assert closed.result == {"signal": 9}


async def test_exec_client_messages_go_to_stdin(server: RunningServer) -> None:
    key = await api_key(server)
    async with connect(exec_url(server, "cat"), bearer(key)) as ws:
        await ws.send_message("hello\n")
        await ws.send_message(b"bytes too\n")
        with trio.fail_after(10):
            assert await ws.get_message() == "hello"
            assert await ws.get_message() == "bytes too"
        await ws.send_message(b"")  # an empty binary message closes stdin: cat ends
        closed = await read_all(ws)
    assert closed.result == {"exit_code": 0}


async def test_exec_client_close_kills_the_process_group(server: RunningServer) -> None:
    key = await api_key(server)
    script = "sleep 60 & echo $$ $!; wait"
    async with connect(exec_url(server, "sh", "-c", script), bearer(key)) as ws:
        with trio.fail_after(10):
            leader, child = (int(p) for p in str(await ws.get_message()).split())
    action = await only_action(server)
    with trio.fail_after(10):
        result = await action.wait_result()
    assert result.cancelled
    assert not alive(leader)
    assert not alive(child)


async def test_exec_vanished_client_kills_the_process(server: RunningServer) -> None:
    key = await api_key(server)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(upgrade_request("/api/v1/actions/exec?argv=sleep&argv=60", bearer(key)))
    with trio.fail_after(10):
        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 101 ")
    await stream.aclose()  # no close frame: the TCP connection just goes away
    with trio.fail_after(10):
        result = await (await only_action(server)).wait_result()
    assert result.cancelled


async def test_exec_answers_pings(server: RunningServer) -> None:
    async with connect(exec_url(server, "sleep", "30"), bearer(await api_key(server))) as ws:
        with trio.fail_after(10):
            await ws.ping(b"are you there")


async def test_exec_counts_open_websockets(server: RunningServer) -> None:
    gauge = server.services.metrics.websockets_open.labels(face="actions")
    async with connect(exec_url(server, "sleep", "30"), bearer(await api_key(server))) as ws:
        await ws.ping()
        assert gauge._value.get() == 1
    with trio.fail_after(10):
        await (await only_action(server)).wait_result()  # cancelled after the socket was counted out
    assert gauge._value.get() == 0


async def test_exec_read_with_websocat(server: RunningServer) -> None:
    key = await api_key(server)
    url = exec_url(server, "seq", "1", "2000")
    with trio.fail_after(30):
        done = await trio.run_process(
            [WEBSOCAT, "-U", "-n", url, f"-H=Authorization: Bearer {key}"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
        )
    assert done.stdout.decode().split("\n")[:-1] == [str(i) for i in range(1, 2001)]


async def test_exec_chunks_read_with_websocat(server: RunningServer) -> None:
    key = await api_key(server)
    url = exec_url(server, "head", "-c", "1000000", "/dev/zero", framing="chunks")
    with trio.fail_after(30):
        done = await trio.run_process(
            [WEBSOCAT, "-b", "-U", "-n", url, f"-H=Authorization: Bearer {key}"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
        )
    assert done.stdout == b"\0" * 1_000_000


# -- limits ----------------------------------------------------------------------------------------------


async def test_exec_ten_mib_client_frame_is_closed_1009(server: RunningServer) -> None:
    async with connect(exec_url(server, "sh", "-c", "cat >/dev/null"), bearer(await api_key(server))) as ws:
        with trio.fail_after(20):
            with suppress(ConnectionClosed):
                await ws.send_message(b"x" * (10 * 1024 * 1024))
            closed = await read_all(ws)
    assert closed.code == 1009
    with trio.fail_after(10):
        assert (await (await only_action(server)).wait_result()).cancelled


async def test_output_ten_mib_client_frame_is_closed_1009(server: RunningServer) -> None:
    action = await server.services.actions.start_process(["sleep", "30"], owner="admin")
    async with connect(output_url(server, action.id), bearer(await api_key(server))) as ws:
        with trio.fail_after(20):
            with suppress(ConnectionClosed):
                await ws.send_message("y" * (10 * 1024 * 1024))
            closed = await read_all(ws)
    assert closed.code == 1009
    assert action.result is None  # attaching never owns the action
    action.cancel()


# -- attach to a running action --------------------------------------------------------------------------


async def test_output_replays_then_follows_then_closes_with_result(server: RunningServer) -> None:
    code = "import sys; print('early', flush=True); sys.stdin.readline(); print('late'); sys.exit(4)"
    action = await server.services.actions.start_process(python(code), owner="admin")
    async with connect(output_url(server, action.id), bearer(await api_key(server))) as ws:
        with trio.fail_after(10):
            assert await ws.get_message() == "early"
        await action.send_stdin(b"go\n")
        closed = await read_all(ws)
    assert closed.messages == ["late"]
    assert closed.result == {"exit_code": 4}


async def test_output_of_a_finished_action_replays_and_closes(server: RunningServer) -> None:
    action = await server.services.actions.start_process(["printf", "a\\nb"], owner="admin")
    with trio.fail_after(10):
        await action.wait_result()
    async with connect(output_url(server, action.id, "chunks"), bearer(await api_key(server))) as ws:
        closed = await read_all(ws)
    assert closed.messages == [b"a\nb"]
    assert closed.result == {"exit_code": 0}


async def test_output_client_messages_do_not_reach_stdin(server: RunningServer) -> None:
    action = await server.services.actions.start_process(["cat"], owner="admin")
    async with connect(output_url(server, action.id), bearer(await api_key(server))) as ws:
        await ws.send_message("ignored\n")
        await ws.ping()
    await action.close_stdin()
    with trio.fail_after(10):
        assert (await action.wait_result()).exit_code == 0
    async with connect(output_url(server, action.id), bearer(await api_key(server))) as ws:
        assert (await read_all(ws)).messages == []


async def test_output_member_reads_own_action_but_not_others(server: RunningServer) -> None:
    bob = await member_key(server, "bob")
    own = await server.services.actions.start_process(["echo", "mine"], owner="bob")
    other = await server.services.actions.start_process(["echo", "theirs"], owner="admin")
    async with connect(output_url(server, own.id), bearer(bob)) as ws:
        assert (await read_all(ws)).messages == ["mine"]
    assert await refused(server, output_url(server, other.id), bearer(bob)) == 403


async def test_output_unknown_action_is_404(server: RunningServer) -> None:
    with pytest.raises(ActionNotFound):
        server.services.actions.get("0123456789abcdef")
    assert await refused(server, output_url(server, "0123456789abcdef"), bearer(await api_key(server))) == 404


# -- refusals before the upgrade -------------------------------------------------------------------------


async def test_unauthenticated_upgrade_is_401(server: RunningServer) -> None:
    assert await refused(server, exec_url(server, "true"), []) == 401
    assert await refused(server, output_url(server, "0123456789abcdef"), []) == 401
    assert server.services.actions.list() == []


async def test_bad_key_is_401(server: RunningServer) -> None:
    assert await refused(server, exec_url(server, "true"), bearer("hearth_" + "0" * 64)) == 401


async def test_member_exec_is_403(server: RunningServer) -> None:
    assert await refused(server, exec_url(server, "true"), bearer(await member_key(server))) == 403
    assert server.services.actions.list() == []


async def test_exec_without_argv_is_400(server: RunningServer) -> None:
    assert await refused(server, f"{server.ws_url}/api/v1/actions/exec", bearer(await api_key(server))) == 400


async def test_unknown_framing_is_400(server: RunningServer) -> None:
    assert await refused(server, exec_url(server, "true", framing="jpeg"), bearer(await api_key(server))) == 400


async def test_x_api_key_header_authenticates(server: RunningServer) -> None:
    async with connect(exec_url(server, "echo", "hi"), [(b"X-API-Key", (await api_key(server)).encode())]) as ws:
        assert (await read_all(ws)).messages == ["hi"]


def cookie_headers(server: RunningServer, origin: str) -> Headers:
    token = server.services.auth.tokens.issue("admin", "admin")
    return [(b"Cookie", f"hearth_access={token}".encode()), (b"Origin", origin.encode())]


async def test_cookie_with_same_origin_is_accepted(server: RunningServer) -> None:
    headers = cookie_headers(server, f"http://127.0.0.1:{server.port}")
    async with connect(exec_url(server, "echo", "cookie"), headers) as ws:
        assert (await read_all(ws)).messages == ["cookie"]


async def test_cookie_with_foreign_origin_is_403(server: RunningServer) -> None:
    assert await refused(server, exec_url(server, "true"), cookie_headers(server, "http://evil.example")) == 403
    assert await refused(server, exec_url(server, "true"), cookie_headers(server, "null")) == 403
    assert server.services.actions.list() == []


async def test_cookie_without_origin_is_403(server: RunningServer) -> None:
    token = server.services.auth.tokens.issue("admin", "admin")
    assert await refused(server, exec_url(server, "true"), [(b"Cookie", f"hearth_access={token}".encode())]) == 403


async def test_malformed_upgrade_is_400(server: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(
            b"GET /api/v1/actions/exec?argv=true HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"  # no key
        )
        with trio.fail_after(10):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")


# -- server shutdown -------------------------------------------------------------------------------------


async def test_server_shutdown_closes_hot_sockets(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, make_settings(data_dir))
        key = await api_key(running)
        async with connect(exec_url(running, "sleep", "60"), bearer(key)) as ws:
            await ws.ping()
            running.cancel_scope.cancel()
            closed = await read_all(ws)
    # the socket is told the server goes away (1001), unless the action's own cancel (1000) came first
    assert closed.code in (1000, 1001)
    if closed.code == 1000:
        assert closed.result["cancelled"] is True
