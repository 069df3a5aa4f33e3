"""REST routes under /api/v1/actions against a real server: who may start, see, cancel and feed actions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from core.auth import LOCAL_ADMIN
from core.principals import Role
from tests.conftest import RunningServer

PASSWORD = "a long enough password"


async def token_for(server: RunningServer, name: str, role: Role) -> dict[str, str]:
    """Create the user and log in over HTTP; returns the Authorization header."""
    await server.services.auth.create_user(LOCAL_ADMIN, name, PASSWORD, role)
    async with server.client() as client:
        response = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def admin(server: RunningServer) -> dict[str, str]:
    return await token_for(server, "root", "admin")


@pytest.fixture
async def member(server: RunningServer) -> dict[str, str]:
    return await token_for(server, "mia", "member")


async def start(server: RunningServer, headers: dict[str, str], **body: Any) -> httpx.Response:
    async with server.client(headers=headers) as client:
        return await client.post("/api/v1/actions", json=body)


async def finished(server: RunningServer, headers: dict[str, str], action_id: str) -> dict[str, Any]:
    """The action's info over HTTP, once it has finished."""
    await server.services.actions.get(action_id).wait_result()
    async with server.client(headers=headers) as client:
        response = await client.get(f"/api/v1/actions/{action_id}")
    assert response.status_code == 200
    info: dict[str, Any] = response.json()
    return info


async def test_admin_starts_an_action_and_replays_its_log(server: RunningServer, admin: dict[str, str]) -> None:
    response = await start(server, admin, argv=["sh", "-c", "echo hi; echo oops >&2; exit 4"], name="greet")
    assert response.status_code == 201
    info = response.json()
    assert (info["name"], info["owner"], info["kind"]) == ("greet", "root", "process")
    done = await finished(server, admin, info["id"])
    assert done["state"] == "finished"
    assert done["result"] == {"exit_code": 4, "signal": None, "error": None, "cancelled": False}
    async with server.client(headers=admin) as client:
        log = await client.get(f"/api/v1/actions/{info['id']}/log")
    assert log.status_code == 200
    assert log.headers["content-type"] == "application/octet-stream"
    assert sorted(log.content.splitlines()) == [b"hi", b"oops"]


async def test_log_route_streams_a_large_log(server: RunningServer, admin: dict[str, str]) -> None:
    info = (await start(server, admin, argv=["seq", "1", "100000"])).json()
    await finished(server, admin, info["id"])
    async with server.client(headers=admin) as client, client.stream("GET", f"/api/v1/actions/{info['id']}/log") as r:
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert body == b"".join(b"%d\n" % i for i in range(1, 100001))


async def test_starting_is_for_admins_only(server: RunningServer, member: dict[str, str]) -> None:
    assert (await start(server, member, argv=["true"])).status_code == 403
    assert (await start(server, {}, argv=["true"])).status_code == 401
    assert server.services.actions.list() == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"argv": []}, 422),
        ({"argv": ["true"], "shell": True}, 422),
        ({"argv": ["tr\u0000ue"]}, 422),
        ({"argv": ["true"], "timeout": 0}, 422),
        ({"argv": ["true"], "env": {"A=B": "x"}}, 422),
        ({"argv": ["x" * 40000]}, 422),
    ],
)
async def test_start_refuses_bad_bodies(
    server: RunningServer, admin: dict[str, str], body: dict[str, Any], status: int
) -> None:
    response = await start(server, admin, **body)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


async def test_start_refuses_malformed_json(server: RunningServer, admin: dict[str, str]) -> None:
    async with server.client(headers=admin) as client:
        response = await client.post("/api/v1/actions", content=b"{not json")
    assert response.status_code == 400


async def test_missing_program_is_a_finished_action_with_an_error(server: RunningServer, admin: dict[str, str]) -> None:
    response = await start(server, admin, argv=["/no/such/program"])
    assert response.status_code == 201
    done = await finished(server, admin, response.json()["id"])
    assert "No such file or directory" in done["result"]["error"]


async def test_members_see_their_own_actions_admins_see_all(
    server: RunningServer, admin: dict[str, str], member: dict[str, str]
) -> None:
    mine = await server.services.actions.start_process(["true"], owner="mia")
    theirs = await server.services.actions.start_process(["true"], owner="someone")
    async with server.client(headers=member) as client:
        listed = (await client.get("/api/v1/actions")).json()["actions"]
        own = await client.get(f"/api/v1/actions/{mine.id}")
        other = await client.get(f"/api/v1/actions/{theirs.id}")
        other_log = await client.get(f"/api/v1/actions/{theirs.id}/log")
        missing = await client.get("/api/v1/actions/0123456789abcdef")
    assert [a["id"] for a in listed] == [mine.id]
    assert own.status_code == 200
    assert (other.status_code, other_log.status_code, missing.status_code) == (403, 403, 404)
    async with server.client(headers=admin) as client:
        everything = (await client.get("/api/v1/actions")).json()["actions"]
    assert {a["id"] for a in everything} == {mine.id, theirs.id}


async def test_owner_cancels_others_cannot(
    server: RunningServer, admin: dict[str, str], member: dict[str, str]
) -> None:
    other = await token_for(server, "max", "member")
    action = await server.services.actions.start_process(["sleep", "30"], owner="mia")
    async with server.client(headers=other) as client:
        refused = await client.post(f"/api/v1/actions/{action.id}/cancel")
    assert refused.status_code == 403
    async with server.client(headers=member) as client:
        accepted = await client.post(f"/api/v1/actions/{action.id}/cancel")
    assert accepted.status_code == 202
    result = await action.wait_result()
    assert result.cancelled
    assert result.error == "cancelled by user:mia"


async def test_stdin_route_feeds_and_closes(server: RunningServer, admin: dict[str, str]) -> None:
    info = (await start(server, admin, argv=["cat"])).json()
    url = f"/api/v1/actions/{info['id']}/stdin"
    async with server.client(headers=admin) as client:
        first = await client.post(url, content=b"hello ")
        second = await client.post(url, content=b"world", params={"close": "true"})
        late = await client.post(url, content=b"late")
    assert (first.status_code, second.status_code) == (204, 204)
    assert late.status_code == 409
    assert late.json()["detail"] == "stdin is closed"
    assert (await finished(server, admin, info["id"]))["result"]["exit_code"] == 0
    async with server.client(headers=admin) as client:
        log = await client.get(f"/api/v1/actions/{info['id']}/log")
    assert log.content == b"hello world"


async def test_stdin_route_refuses_oversized_bodies(server: RunningServer, admin: dict[str, str]) -> None:
    info = (await start(server, admin, argv=["cat"])).json()
    limit = server.services.settings.server.max_body_bytes
    path = f"/api/v1/actions/{info['id']}/stdin"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {admin['Authorization']}\r\n"
    head += f"Content-Length: {limit + 1}\r\n\r\n"
    with trio.fail_after(10):  # a plain socket: the server answers 413 on the announced length, before the body
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(head.encode())
            status_line = (await stream.receive_some()).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413"
    server.services.actions.get(info["id"]).cancel()


async def test_stdin_of_someone_elses_action_is_refused(server: RunningServer, member: dict[str, str]) -> None:
    action = await server.services.actions.start_process(["cat"], owner="root")
    async with server.client(headers=member) as client:
        response = await client.post(f"/api/v1/actions/{action.id}/stdin", content=b"x")
    assert response.status_code == 403
    action.cancel()


async def test_routes_are_described_in_openapi(server: RunningServer) -> None:
    async with server.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/v1/actions"]) == {"get", "post"}
    for suffix, method in (("", "get"), ("/cancel", "post"), ("/stdin", "post"), ("/log", "get")):
        assert method in paths["/api/v1/actions/{action_id}" + suffix]
