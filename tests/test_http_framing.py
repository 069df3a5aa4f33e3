"""A request with both Content-Length and Transfer-Encoding: 400, and the connection closed (RFC 9112 §6.3), so
bytes a Content-Length-trusting front proxy counts as body are never served as a second request."""

from __future__ import annotations

import re

import trio

from tests.conftest import RunningServer
from tests.test_server import read_to_eof

SMUGGLED = b"GET /api/v1/auth/me HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
BODY = b"0\r\n\r\n" + SMUGGLED  # chunked: empty body, then a "second request"; by Content-Length: all body
CL_TE = (
    b"POST /api/v1/auth/logout HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY
)


async def test_content_length_with_transfer_encoding_is_not_followed_by_another_request(
    server: RunningServer,
) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(CL_TE)
        received = await read_to_eof(stream)
    responses = received.count(b"HTTP/1.1 ")
    assert responses == 1, f"the smuggled request was answered too: {received!r}"
    assert received.startswith(b"HTTP/1.1 400 ")


async def test_the_same_later_on_a_kept_alive_connection(server: RunningServer) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + CL_TE)
        received = await read_to_eof(stream)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"400"], received
