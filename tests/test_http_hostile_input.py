"""Hostile client input gets a 4xx, never a 500 with a logged traceback (cheap for an anonymous or
low-privilege client to repeat, it would flood the error log)."""

from __future__ import annotations

import trio

from tests.conftest import RunningServer, api_key_for


async def test_deeply_nested_json_is_400_not_500(server: RunningServer) -> None:
    # msgspec raises RecursionError past ~1000 levels. Anonymous, on /api/v1/auth/login: 10 KB of brackets.
    depth = 5000
    body = b'{"x":' + b"[" * depth + b"]" * depth + b',"username":"a","password":"b"}'
    async with server.client() as client:
        response = await client.post("/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


async def test_keys_limit_with_a_unicode_digit_is_422_not_500(server: RunningServer) -> None:
    # "²".isdigit() is True but int("²") raises ValueError.
    key = await api_key_for(server, "viewer1", "viewer")
    async with server.client() as client:
        response = await client.get("/api/v1/keys", params={"limit": "²"}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422, response.text


UPGRADE = (
    b" HTTP/1.1\r\nHost: \xff\xfe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_hot_websocket_upgrade_with_a_non_idna_host_is_400_not_500(server: RunningServer) -> None:
    # wsproto decodes Host with "idna" and raises UnicodeError (anonymous, before authentication).
    for path in (b"/api/v1/actions/exec?argv=true", b"/api/v1/ws"):
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(b"GET " + path + UPGRADE)
            with trio.fail_after(10):
                answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 400 "), (path, answer[:80])
