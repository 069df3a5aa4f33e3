"""Cookie-authenticated REST requests that change something need this server's Origin (no CSRF).

A browser attaches the ``hearth_access`` cookie (SameSite=Strict) to requests from any *same-site* page: another
port on the same host (http://127.0.0.1:3000 vs :8080, SameSite ignores ports), or a sibling subdomain. Such a
page can send a form POST (``application/x-www-form-urlencoded`` or ``text/plain``) or a ``no-cors`` fetch with
a ``text/plain`` body without any CORS preflight; without the Origin check an admin's browser could be made to
start a process or create an admin account.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from core.auth import LOCAL_ADMIN
from tests.conftest import RunningServer, make_settings, start_server

PASSWORD = "a long enough password"
EVIL = "http://evil.example"


async def log_in_as_admin(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Put an admin's ``hearth_access`` cookie in ``client``'s jar, as a logged-in browser holds it."""
    await server.services.auth.create_user(LOCAL_ADMIN, "root", PASSWORD, "admin")
    response = await client.post("/api/v1/auth/login", json={"username": "root", "password": PASSWORD})
    assert response.status_code == 200 and "hearth_access" in client.cookies


async def test_text_plain_cross_origin_post_with_cookie_does_not_start_a_process(server: RunningServer) -> None:
    # What <form enctype="text/plain"><input name='{"argv":["true"],"name":"' value='"}'> sends.
    async with server.client() as client:
        await log_in_as_admin(server, client)
        response = await client.post(
            "/api/v1/actions",
            content=b'{"argv":["true"],"name":"="}\r\n',
            headers={"Content-Type": "text/plain", "Origin": EVIL},
        )
    assert response.status_code == 403, response.text
    assert server.services.actions.list() == []


async def test_form_cross_origin_register_with_cookie_does_not_create_an_admin(server: RunningServer) -> None:
    async with server.client() as client:
        await log_in_as_admin(server, client)
        response = await client.post(
            "/api/v1/auth/register",
            data={"username": "intruder", "password": "attacker chosen password", "role": "admin"},
            headers={"Origin": EVIL},
        )
        intruder = await client.post(
            "/api/v1/auth/login", json={"username": "intruder", "password": "attacker chosen password"}
        )
    assert response.status_code == 403, response.text
    assert intruder.status_code == 401


async def test_same_origin_post_with_cookie_works_and_a_missing_origin_is_refused(server: RunningServer) -> None:
    async with server.client() as client:
        await log_in_as_admin(server, client)
        body = {"argv": ["true"]}
        own = await client.post("/api/v1/actions", json=body, headers={"Origin": server.base_url})
        bare = await client.post("/api/v1/actions", json=body)
        read = await client.get("/api/v1/actions")  # a read needs no Origin
    assert own.status_code == 201, own.text
    assert bare.status_code == 403 and "Origin" in bare.json()["detail"]
    assert read.status_code == 200


async def test_an_allowed_origin_may_use_the_cookie(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_settings(data_dir, auth={"allowed_origins": [EVIL]}))
        async with server.client() as client:
            await log_in_as_admin(server, client)
            response = await client.post("/api/v1/actions", json={"argv": ["true"]}, headers={"Origin": EVIL})
        assert response.status_code == 201, response.text
        server.cancel_scope.cancel()
