"""The accept loop: request heads read and routed, everything not hot handed to hypercorn (quart) intact."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from quart import websocket
from quart_trio import QuartTrio
from trio_websocket import open_websocket_url

import app as hearth
from core.config import Settings
from core.services import Services
from handlers.app import create_app
from handlers.server import MAX_HEAD_BYTES, ReplayStream, read_request_head, serve_http
from tests.conftest import RunningServer, make_settings, start_server

GET_CLOSE = b"GET /openapi.json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


async def exchange(port: int, *pieces: bytes, pause: float = 0.0, host: str = "127.0.0.1") -> bytes:
    """Send ``pieces`` (``pause`` apart) on one connection and read until the server closes it."""
    async with await trio.open_tcp_stream(host, port) as stream:
        for i, piece in enumerate(pieces):
            if i and pause:
                await trio.sleep(pause)
            await stream.send_all(piece)
        return await read_to_eof(stream)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    received = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def read_response(stream: trio.abc.ReceiveStream) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length: (status, body)."""
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
    return int(head.split(b" ", 2)[1]), body


def post_head(path: str, length: int) -> bytes:
    """A POST request head without its final blank line."""
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n".encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- plain HTTP through the accept loop ------------------------------------------------------------------


async def test_rest_request_is_handed_to_quart(server: RunningServer) -> None:
    response = await exchange(server.port, GET_CLOSE)
    assert status_of(response) == 200
    assert json.loads(response.partition(b"\r\n\r\n")[2])["openapi"].startswith("3.")


async def test_keep_alive_serves_several_requests_on_one_connection(server: RunningServer) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        for _ in range(3):
            await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")
            status, body = await read_response(stream)
            assert status == 200
            assert json.loads(body)["openapi"]


async def test_pipelined_requests_in_the_first_read_are_all_answered(server: RunningServer) -> None:
    response = await exchange(server.port, b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n" + GET_CLOSE)
    assert response.count(b"HTTP/1.1 200 ") == 2


async def test_large_body_arrives_whole(server: RunningServer) -> None:
    body = b'{"username": "nobody", "password": "not the password"}' + b" " * 900_000
    head = post_head("/api/v1/auth/login", len(body)) + b"Connection: close\r\n\r\n"
    response = await exchange(server.port, head + body[:1000], body[1000:])
    assert status_of(response) == 401  # parsed whole: a wrong password, not a malformed body


async def test_body_over_the_limit_is_413(server: RunningServer) -> None:
    head = post_head("/api/v1/auth/login", 2_000_000) + b"\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(head)  # refused on the announced length, before the body is sent
        status, body = await read_response(stream)
    assert status == 413
    assert json.loads(body)["detail"]


async def test_half_sent_request_head_is_completed_later(server: RunningServer) -> None:
    response = await exchange(server.port, GET_CLOSE[:20], GET_CLOSE[20:], pause=0.2)
    assert status_of(response) == 200


async def test_head_split_inside_the_blank_line_is_found(server: RunningServer) -> None:
    response = await exchange(server.port, GET_CLOSE[:-3], GET_CLOSE[-3:], pause=0.1)
    assert status_of(response) == 200


async def test_garbage_gets_400_and_the_server_keeps_serving(server: RunningServer) -> None:
    response = await exchange(server.port, b"\x16\x03\x01\x00\xffnot http at all\r\n\r\n")
    assert response == b"" or status_of(response) == 400
    assert status_of(await exchange(server.port, GET_CLOSE)) == 200


async def test_garbage_then_eof_is_closed(server: RunningServer) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"\x00\x01\x02 no blank line")
        await stream.send_eof()
        response = await read_to_eof(stream)
    assert response == b"" or status_of(response) == 400
    assert status_of(await exchange(server.port, GET_CLOSE)) == 200


async def test_connection_closed_before_a_byte_is_harmless(server: RunningServer) -> None:
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.aclose()
    assert status_of(await exchange(server.port, GET_CLOSE)) == 200


async def test_request_head_over_16k_is_431(server: RunningServer) -> None:
    head = b"GET /openapi.json HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert status_of(await exchange(server.port, head)) == 431


async def test_endless_request_head_is_431(server: RunningServer) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        with trio.move_on_after(5), suppress(trio.BrokenResourceError):
            for _ in range(100):  # the server answers and closes after 16 KiB; sending may then fail
                await stream.send_all(b"X-Header: " + b"b" * 1000 + b"\r\n")
        assert status_of(await read_to_eof(stream)) == 431


async def test_upgrade_on_a_hot_path_with_post_goes_to_quart(server: RunningServer) -> None:
    request = (
        b"POST /api/v1/actions/exec HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(request)
        status, body = await read_response(stream)
    assert status in (404, 405)
    assert json.loads(body)["detail"]


async def test_upgrade_to_an_unknown_path_goes_to_quart(server: RunningServer) -> None:
    request = (
        b"GET /no/such/socket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(request)
        status, _ = await read_response(stream)
    assert status == 404


@pytest.mark.parametrize("path", [b"/api/v1/ws/", b"/api/v1/actions/exec", b"/api/v1/actions/abc/output"])
async def test_hot_upgrade_after_another_request_is_told_to_use_a_new_connection(
    server: RunningServer, path: bytes
) -> None:
    upgrade = (
        b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(stream))[0] == 200
        await stream.send_all(upgrade)
        status, body = await read_response(stream)
    assert status == 400
    assert "new connection" in json.loads(body)["detail"]


async def test_plain_get_of_a_hot_path_goes_to_quart(server: RunningServer) -> None:
    response = await exchange(server.port, b"GET /api/v1/actions/exec HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status_of(response) != 101
    assert json.loads(response.partition(b"\r\n\r\n")[2])["detail"]


async def test_slowloris_head_times_out_with_408(data_dir: Path) -> None:
    settings = make_settings(data_dir, server={"request_head_timeout_seconds": 0.5})
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
            await stream.send_all(b"GET /openapi.json HTTP/1.1\r\n")
            with trio.move_on_after(5), suppress(trio.BrokenResourceError):
                for _ in range(50):  # trickling bytes does not extend the deadline
                    await stream.send_all(b"X: y\r\n")
                    await trio.sleep(0.05)
            response = await read_to_eof(stream)
        assert status_of(response) == 408
        assert status_of(await exchange(running.port, GET_CLOSE)) == 200
        running.cancel_scope.cancel()


TRICKLE_STEPS = 60  # 60 x 0.05 s: six times the head timeout below


async def server_closed(stream: trio.SocketStream) -> bool:
    """Send one more header line and wait 0.05 s: True when the server has closed (EOF or reset)."""
    try:
        await stream.send_all(b"X: y\r\n")
        with trio.move_on_after(0.05):
            return not await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return True
    return False


async def test_a_trickled_later_request_head_is_cut_off_too(data_dir: Path) -> None:
    settings = make_settings(data_dir, server={"request_head_timeout_seconds": 0.5})
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        closed = False
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            with trio.fail_after(10):
                first = await stream.receive_some(65536)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
            for _ in range(TRICKLE_STEPS):
                if closed := await server_closed(stream):
                    break
        running.cancel_scope.cancel()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert closed, "a trickled second request head keeps the connection open past the head timeout"


async def test_a_later_request_body_may_take_longer_than_the_head_timeout(data_dir: Path) -> None:
    """The head deadline ends with the head: a slow body (here of a second request) is not cut."""
    settings = make_settings(data_dir, server={"request_head_timeout_seconds": 0.3})
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(stream))[0] == 200
            body = b'{"username":"nobody","password":"not the password"}'
            await stream.send_all(post_head("/api/v1/auth/login", len(body)) + b"\r\n")
            for byte in range(len(body)):  # about 0.5 s in all: longer than the head timeout
                await trio.sleep(0.01)
                await stream.send_all(body[byte : byte + 1])
            status, _ = await read_response(stream)
        running.cancel_scope.cancel()
    assert status == 401  # the body arrived whole and was checked


# -- serve_http itself: quart websockets, lifespan, graceful shutdown, IPv6 ------------------------------


@asynccontextmanager
async def serving(data_dir: Path, setup: Callable[[QuartTrio], Any], **overrides: Any) -> AsyncIterator[str]:
    """``serve_http`` of a Hearth app that ``setup`` adds routes to; yields the base URL."""
    settings: Settings = make_settings(data_dir, **overrides)
    svc: Services = await hearth.build_services(settings)
    try:
        quart_app = create_app(svc)
        setup(quart_app)
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve_http, quart_app, settings)
            yield binds[0]
            nursery.cancel_scope.cancel()
    finally:
        svc.db.close()


def add_echo(quart_app: QuartTrio) -> None:
    @quart_app.websocket("/test/echo")
    async def echo() -> None:
        while True:
            await websocket.send(await websocket.receive())


async def test_websocket_on_a_path_that_is_not_hot_reaches_quart(data_dir: Path) -> None:
    async with serving(data_dir, add_echo) as base, open_websocket_url("ws" + base[4:] + "/test/echo") as ws:
        await ws.send_message("through quart")
        with trio.fail_after(10):
            assert await ws.get_message() == "through quart"


async def test_a_quart_websocket_outlives_the_head_timeout(data_dir: Path) -> None:
    """After the 101 the head deadline is off: frames are not request heads."""
    overrides = {"server": {"request_head_timeout_seconds": 0.2}}
    async with (
        serving(data_dir, add_echo, **overrides) as base,
        open_websocket_url(base.replace("http", "ws", 1) + "/test/echo") as ws,
    ):
        for word in ("one", "two", "three"):
            await trio.sleep(0.15)  # 0.45 s in all, frames trickling
            await ws.send_message(word)
            with trio.fail_after(10):
                assert await ws.get_message() == word


async def test_lifespan_startup_and_shutdown_run(data_dir: Path) -> None:
    events: list[str] = []

    def setup(quart_app: QuartTrio) -> None:
        @quart_app.before_serving
        async def started() -> None:
            events.append("startup")

        @quart_app.after_serving
        async def stopped() -> None:
            events.append("shutdown")

    async with serving(data_dir, setup):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


async def test_cancel_lets_a_request_in_flight_finish(data_dir: Path) -> None:
    entered = trio.Event()

    def setup(quart_app: QuartTrio) -> None:
        @quart_app.route("/test/slow")
        async def slow() -> str:
            entered.set()
            await trio.sleep(0.5)
            return "finished"

    responses: list[bytes] = []
    async with serving(data_dir, setup) as base, trio.open_nursery() as clients:
        port = int(base.rsplit(":", 1)[1])

        async def call() -> None:
            responses.append(await exchange(port, b"GET /test/slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))

        clients.start_soon(call)
        with trio.fail_after(10):
            await entered.wait()
        # leaving ``serving`` now cancels serve_http while the request sleeps
    assert status_of(responses[0]) == 200
    assert responses[0].endswith(b"finished")


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_bind_on_port_zero(data_dir: Path) -> None:
    async with serving(data_dir, lambda _: None, host="::1") as base:
        assert base.startswith("http://[::1]:")
        port = int(base.rsplit(":", 1)[1])
        assert port > 0
        assert status_of(await exchange(port, GET_CLOSE, host="::1")) == 200


# -- the pieces, with trio's in-memory streams -----------------------------------------------------------


async def test_read_request_head_stops_at_the_blank_line() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"GET /x?y=1 HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\nbody")
    head = await read_request_head(receive)
    assert head.complete and head.data[head.end :] == b"body"
    assert head.method_and_path() == (b"GET", b"/x")
    assert head.is_websocket_upgrade()


async def test_read_request_head_accepts_bare_newlines() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"GET / HTTP/1.0\n\n")
    head = await read_request_head(receive)
    assert head.complete and head.method_and_path() == (b"GET", b"/")
    assert not head.is_websocket_upgrade()


async def test_read_request_head_reports_eof_and_size() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"GET / HT")
    await send.aclose()
    head = await read_request_head(receive)
    assert not head.complete and not head.too_large
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"x" * (MAX_HEAD_BYTES + 1))
    assert (await read_request_head(receive)).too_large


async def test_replay_stream_returns_the_prefix_first() -> None:
    left, right = trio.testing.memory_stream_pair()
    stream = ReplayStream(left, b"abcdef")  # type: ignore[arg-type]
    await right.send_all(b"ghi")
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some() == b"ef"
    assert await stream.receive_some() == b"ghi"
    await stream.send_all(b"back")
    assert await right.receive_some() == b"back"


async def test_http2_prior_knowledge_still_reaches_quart(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, http1=False, http2=True, timeout=10) as client:
        response = await client.get("/openapi.json")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200


async def test_wrong_websocket_version_on_a_hot_path_is_426(server: RunningServer) -> None:
    request = (
        b"GET /api/v1/actions/exec?argv=true HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    response = await exchange(server.port, request)
    assert status_of(response) == 426
    assert b"sec-websocket-version: 13" in response.lower()
