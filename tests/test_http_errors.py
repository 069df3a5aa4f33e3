"""Request-level errors all leave as JSON ``{"detail"}``: malformed JSON, oversized bodies, 404, 405, 500."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio_websocket
from quart import Response, request
from quart_trio import QuartTrio

from core.errors import Conflict
from handlers.app import create_app
from handlers.common import decode_json, json_response
from handlers.server import serve_http
from tests.conftest import RunningServer, make_settings, start_server

LIMIT = 1024


class Item(msgspec.Struct):
    name: str
    count: int


def app_with_probe_routes(running: RunningServer) -> QuartTrio:
    """The production app plus a few routes that exercise each body path (ours and quart's own)."""
    app = create_app(running.services)

    async def echo() -> Response:
        item = await decode_json(Item)
        return json_response({"name": item.name, "count": item.count})

    async def raw() -> Response:
        return json_response({"size": len(await request.get_data())})

    async def quart_json() -> Response:
        return json_response(await request.get_json())

    async def conflict() -> Response:
        raise Conflict("already there")

    async def crash() -> Response:
        raise RuntimeError("secret internals")

    for path, view in (("/probe/echo", echo), ("/probe/raw", raw), ("/probe/json", quart_json)):
        app.add_url_rule(path, view_func=view, methods=["POST"])
    app.add_url_rule("/probe/conflict", view_func=conflict, methods=["GET"])
    app.add_url_rule("/probe/crash", view_func=crash, methods=["GET"])
    return app


@pytest.fixture
async def probe(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A real server (body limit 1 KiB) serving the probe app on its own port 0."""
    running = await start_server(nursery, make_settings(data_dir, server={"max_body_bytes": LIMIT}))
    binds = await nursery.start(serve_http, app_with_probe_routes(running), running.services.settings)
    async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
        yield client
    running.cancel_scope.cancel()


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


async def post_chunked(base_url: str, path: str, total: int, size: int = 256) -> tuple[int, dict[str, Any]]:
    """POST ``total`` bytes with ``Transfer-Encoding: chunked`` over a plain socket; (status, JSON body).

    A plain socket, because the server may answer 413 before the body ends, and a client library then
    abandons its body generator half way.
    """
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(head.encode() + chunk * (total // size) + b"0\r\n\r\n")
            response = await receive_response(stream)
    status_line, _, rest = response.partition(b"\r\n")
    assert b"content-type: application/json" in rest.lower()
    return int(status_line.split()[1]), msgspec.json.decode(rest.partition(b"\r\n\r\n")[2])


async def post_with_length(base_url: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``body`` with its Content-Length over a plain socket (see ``post_chunked`` for why); (status, JSON)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):  # the server may answer and close before the end
                await stream.send_all(head.encode() + body)
            response = await receive_response(stream)
    status_line, _, rest = response.partition(b"\r\n")
    assert b"content-type: application/json" in rest.lower()
    return int(status_line.split()[1]), msgspec.json.decode(rest.partition(b"\r\n\r\n")[2])


async def receive_response(stream: trio.SocketStream) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read until its body is complete."""
    response = b""
    while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < content_length(response):
        data = await stream.receive_some()
        assert data, f"connection closed early: {response!r}"
        response += data
    return response


def content_length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError("response without content-length")


async def assert_detail(response: httpx.Response, status: int, contains: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert list(body) == ["detail"] and contains in body["detail"]
    return body


async def test_well_formed_json_is_decoded(probe: httpx.AsyncClient) -> None:
    response = await probe.post("/probe/echo", json={"name": "a", "count": 2})
    assert response.status_code == 200
    assert response.json() == {"name": "a", "count": 2}


@pytest.mark.parametrize("body", [b'{"name": "a", "count": ', b"not json at all", b'{"name": "\xff"}'])
async def test_malformed_json_is_400_with_a_message(probe: httpx.AsyncClient, body: bytes) -> None:
    response = await probe.post("/probe/echo", content=body, headers={"content-type": "application/json"})
    await assert_detail(response, 400, "malformed JSON")


async def test_empty_body_is_400(probe: httpx.AsyncClient) -> None:
    await assert_detail(await probe.post("/probe/echo"), 400, "empty")


async def test_wrong_values_are_422(probe: httpx.AsyncClient) -> None:
    await assert_detail(await probe.post("/probe/echo", json={"name": "a", "count": "two"}), 422, "count")


async def test_quart_get_json_malformed_is_400_json(probe: httpx.AsyncClient) -> None:
    response = await probe.post("/probe/json", content=b"{oops", headers={"content-type": "application/json"})
    await assert_detail(response, 400)


@pytest.mark.parametrize("path", ["/probe/echo", "/probe/raw"])
async def test_oversized_body_with_content_length_is_413(probe: httpx.AsyncClient, path: str) -> None:
    status, body = await post_with_length(str(probe.base_url).rstrip("/"), path, b"x" * (LIMIT + 1))
    assert status == 413
    assert f"larger than {LIMIT} bytes" in body["detail"]


@pytest.mark.parametrize("path", ["/probe/echo", "/probe/raw"])
async def test_oversized_chunked_body_without_length_is_413(probe: httpx.AsyncClient, path: str) -> None:
    status, body = await post_chunked(str(probe.base_url).rstrip("/"), path, 64 * LIMIT)
    assert status == 413
    assert body == {"detail": f"request body is larger than {LIMIT} bytes"}


async def test_chunked_body_within_the_limit_is_read(probe: httpx.AsyncClient) -> None:
    request = probe.build_request("POST", "/probe/raw", content=chunks(LIMIT))
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    response = await probe.send(request)
    assert response.status_code == 200
    assert response.json() == {"size": LIMIT}
    assert await post_chunked(str(probe.base_url).rstrip("/"), "/probe/echo", LIMIT) == (
        400,
        {"detail": "malformed JSON: JSON is malformed: invalid character (byte 0)"},
    )


async def test_unknown_route_is_404_json(probe: httpx.AsyncClient) -> None:
    await assert_detail(await probe.get("/no/such/thing"), 404, "/no/such/thing")


async def test_wrong_method_is_405_json_with_allow(probe: httpx.AsyncClient) -> None:
    response = await probe.delete("/healthz")
    await assert_detail(response, 405, "DELETE")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


async def test_hearth_error_keeps_its_status(probe: httpx.AsyncClient) -> None:
    await assert_detail(await probe.get("/probe/conflict"), 409, "already there")


async def test_unexpected_exception_is_500_without_internals(probe: httpx.AsyncClient) -> None:
    body = await assert_detail(await probe.get("/probe/crash"), 500)
    assert body == {"detail": "internal error"}


async def test_real_login_route_answers_malformed_and_oversized_json(server: RunningServer) -> None:
    limit = server.services.settings.server.max_body_bytes
    async with server.client() as client:
        malformed = await client.post(
            "/api/v1/auth/login", content=b'{"username":', headers={"content-type": "application/json"}
        )
    status, body = await post_with_length(server.base_url, "/api/v1/auth/login", b" " * (limit + 1))
    await assert_detail(malformed, 400, "malformed JSON")
    assert status == 413 and "larger than" in body["detail"]


async def test_websocket_to_unknown_route_is_rejected_with_404_json(server: RunningServer) -> None:
    rejected: list[trio_websocket.ConnectionRejected] = []
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)  # our own stream: trio-websocket leaks its own
    async with stream:  # socket when the handshake is rejected
        try:
            async with trio.open_nursery() as nursery:
                await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/no/such/socket")
        except* trio_websocket.ConnectionRejected as group:
            rejected = leaves(group)
    assert [r.status_code for r in rejected] == [404]
    assert rejected[0].body is not None
    assert msgspec.json.decode(rejected[0].body) == {"detail": "no route for /no/such/socket"}


def leaves(group: BaseExceptionGroup[trio_websocket.ConnectionRejected]) -> list[trio_websocket.ConnectionRejected]:
    out: list[trio_websocket.ConnectionRejected] = []
    for e in group.exceptions:
        out += leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out
