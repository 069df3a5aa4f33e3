"""The failed-login throttle (10 per user name in 5 minutes) counts checks under way: a burst of parallel
guesses gets no more password checks than the limit."""

from __future__ import annotations

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
