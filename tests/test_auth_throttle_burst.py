"""The failed-login throttle (10 per user name in 5 minutes) under bursts: checks of one name run one after
another, so parallel guesses get no more checks than the limit, and parallel requests with the right (Basic)
password all pass."""

from __future__ import annotations

import base64

import httpx
import trio

from core.auth import LOCAL_ADMIN
from storage.audit import recent
from tests.conftest import RunningServer

PASSWORD = "a long enough password"
BURST = 24  # bounded; each guess is one argon2 verification (~0.1 s, two at a time)


async def test_parallel_wrong_passwords_get_at_most_ten_checks(server: RunningServer) -> None:
    await server.services.auth.create_user(LOCAL_ADMIN, "victim", PASSWORD, "admin")
    statuses: list[int] = []

    async def guess(client: httpx.AsyncClient, n: int) -> None:
        body = {"username": "victim", "password": f"guess number {n}"}
        statuses.append((await client.post("/api/v1/auth/login", json=body)).status_code)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client, trio.open_nursery() as nursery:
        for n in range(BURST):
            nursery.start_soon(guess, client, n)
    checked = statuses.count(401)  # 401 = the password was verified; 429 = refused by the throttle
    denied_rows = await recent(server.services.db, action="auth.login", limit=1000)
    assert len(statuses) == BURST
    assert checked <= 10, f"{checked} passwords checked in one burst (statuses {sorted(statuses)})"
    assert len(denied_rows) <= 10


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_parallel_requests_with_the_right_basic_password_all_succeed(server: RunningServer) -> None:
    await server.services.auth.create_user(LOCAL_ADMIN, "alice", PASSWORD, "member")
    statuses: list[int] = []

    async def me(client: httpx.AsyncClient) -> None:
        statuses.append((await client.get("/api/v1/auth/me", headers=basic("alice", PASSWORD))).status_code)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client, trio.open_nursery() as nursery:
        for _ in range(BURST):
            nursery.start_soon(me, client)
    assert len(statuses) == BURST
    assert statuses.count(200) == BURST, f"right password refused: {sorted(statuses)}"


async def test_parallel_distillery_who_am_i_with_basic_is_never_anonymous(server: RunningServer) -> None:
    await server.services.auth.create_user(LOCAL_ADMIN, "bob", PASSWORD, "member")
    via: list[str] = []

    async def who(client: httpx.AsyncClient) -> None:
        via.append((await client.get("/api/v1/auth", headers=basic("bob", PASSWORD))).json()["via"])

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client, trio.open_nursery() as nursery:
        for _ in range(BURST):
            nursery.start_soon(who, client)
    assert len(via) == BURST
    assert via.count("session") == BURST, f"a right Basic password read as: {sorted(via)}"
