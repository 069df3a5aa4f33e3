"""Distillery JSON routes (specs/calls.md §1) against a real server, at both prefixes."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningServer, api_key_for

PREFIXES = ["/api/v1", "/api/v1/http"]


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_auth_anonymous_is_never_401(server: RunningServer, prefix: str) -> None:
    async with server.client() as client:
        plain = await client.get(f"{prefix}/auth")
        bad = await client.get(f"{prefix}/auth", headers={"Authorization": "Bearer not-a-token"})
    for response in (plain, bad):
        assert response.status_code == 200
        assert response.json() == {"user": None, "role": None, "admin": False, "via": "anonymous"}


async def test_auth_names_user_role_and_how(server: RunningServer) -> None:
    key = await api_key_for(server, "ada", "admin")
    async with server.client() as client:
        by_key = (await client.get("/api/v1/auth", headers=key_headers(key))).json()
        login = await client.post("/api/v1/auth/login", json={"username": "ada", "password": "a long enough password"})
        token = login.json()["access_token"]
        by_jwt = (await client.get("/api/v1/auth", headers={"Authorization": f"Bearer {token}"})).json()
        by_cookie = (await client.get("/api/v1/http/auth", headers={"Cookie": f"hearth_access={token}"})).json()
    assert by_key == {"user": "ada", "role": "admin", "admin": True, "via": "api_key"}
    assert by_jwt["via"] == "jwt" and by_jwt["user"] == "ada"
    assert by_cookie["via"] == "session"


async def test_systems_is_an_empty_list_when_there_is_nothing(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/api/v1/http/systems")
    assert response.status_code == 200
    assert response.json() == []


async def test_news_admin_posts_everyone_reads_newest_first(server: RunningServer) -> None:
    admin = key_headers(await api_key_for(server, "root", "admin"))
    async with server.client() as client:
        first = await client.post(
            "/api/v1/news", headers=admin, json={"title": "old", "body": "*x*", "date": "2020-01-01T00:00:00Z"}
        )
        second = await client.post("/api/v1/http/news", headers=admin, json={"title": "new", "body": "y"})
        listed = await client.get("/api/v1/news")
        limited = await client.get("/api/v1/news?limit=1")
    assert first.status_code == 201 and second.status_code == 201
    assert [item["title"] for item in listed.json()] == ["new", "old"]
    assert listed.json()[1]["date"] == "2020-01-01T00:00:00Z"
    assert [item["title"] for item in limited.json()] == ["new"]


async def test_news_writes_need_admin(server: RunningServer) -> None:
    member = key_headers(await api_key_for(server, "mia", "member"))
    async with server.client() as client:
        anonymous = await client.post("/api/v1/news", json={"title": "t", "body": "b"})
        refused = await client.post("/api/v1/news", headers=member, json={"title": "t", "body": "b"})
        delete = await client.delete("/api/v1/news/1", headers=member)
    assert anonymous.status_code == 401
    assert refused.status_code == 403
    assert delete.status_code == 403


async def test_news_delete_and_unknown_id(server: RunningServer) -> None:
    admin = key_headers(await api_key_for(server, "root", "admin"))
    async with server.client(headers=admin) as client:
        item = (await client.post("/api/v1/news", json={"title": "t", "body": "b"})).json()
        deleted = await client.delete(f"/api/v1/news/{item['id']}")
        again = await client.delete(f"/api/v1/http/news/{item['id']}")
        remaining = await client.get("/api/v1/news")
    assert deleted.status_code == 204
    assert again.status_code == 404
    assert remaining.json() == []


@pytest.mark.parametrize(
    ("query", "status"), [("limit=0", 400), ("limit=101", 400), ("limit=abc", 400), ("limit=100", 200)]
)
async def test_news_limit_is_checked(server: RunningServer, query: str, status: int) -> None:
    async with server.client() as client:
        response = await client.get(f"/api/v1/news?{query}")
    assert response.status_code == status


async def test_news_bad_bodies(server: RunningServer) -> None:
    admin = key_headers(await api_key_for(server, "root", "admin"))
    async with server.client(headers=admin) as client:
        no_title = await client.post("/api/v1/news", json={"body": "b"})
        bad_date = await client.post("/api/v1/news", json={"title": "t", "body": "b", "date": "yesterday"})
        malformed = await client.post("/api/v1/news", content=b"{", headers={"Content-Type": "application/json"})
    assert no_title.status_code == 422
    assert bad_date.status_code == 422
    assert malformed.status_code == 400


async def test_calls_catalogue_depends_on_role(server: RunningServer) -> None:
    admin = key_headers(await api_key_for(server, "root", "admin"))
    viewer = key_headers(await api_key_for(server, "vic", "viewer"))
    async with server.client() as client:
        anonymous = await client.get("/api/v1/calls")
        as_admin = (await client.get("/api/v1/calls", headers=admin)).json()
        as_viewer = (await client.get("/api/v1/http/calls", headers=viewer)).json()
    assert anonymous.status_code == 401
    assert {c["name"] for c in as_admin} >= {"backup", "info", "prune"}
    assert [c["name"] for c in as_viewer] == ["info"]
    assert as_viewer[0] == {
        "name": "info",
        "description": as_viewer[0]["description"],
        "params": [],
        "role": "viewer",
        "kind": "builtin",
    }


async def test_calls_history_needs_authentication(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/api/v1/calls/history")
    assert response.status_code == 401


async def test_calls_history_admin_sees_all_member_own(server: RunningServer) -> None:
    from storage import call_history

    db = server.services.db
    for user in ("mia", "bob", "mia"):
        await call_history.begin(
            db, principal=f"user:{user}", user=user, call="info", params=[], started_at="2026-01-01T00:00:00Z"
        )
    admin = key_headers(await api_key_for(server, "root", "admin"))
    member = key_headers(await api_key_for(server, "mia", "member"))
    async with server.client() as client:
        everyone = (await client.get("/api/v1/calls/history", headers=admin)).json()
        own = (await client.get("/api/v1/calls/history", headers=member)).json()
        page = (await client.get(f"/api/v1/calls/history?limit=1&before={everyone[0]['id']}", headers=admin)).json()
    assert [r["user"] for r in everyone] == ["mia", "bob", "mia"]
    assert [r["user"] for r in own] == ["mia", "mia"]
    assert [r["id"] for r in page] == [everyone[1]["id"]]


async def test_routes_are_in_openapi_at_both_prefixes(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for prefix in PREFIXES:
        for name in ("auth", "systems", "news", "news/{news_id}", "calls", "calls/history"):
            assert f"{prefix}/{name}" in paths
