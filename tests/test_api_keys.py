"""API keys: format and hashing, REST under /api/v1/keys, validation refusals, role caps, foreign keys, limits."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
import trio

from core.api_keys import hash_prefix, token_hash
from core.auth import LOCAL_ADMIN
from core.errors import Unauthenticated
from core.principals import Role
from storage.api_keys import KeyRecord
from storage.audit import recent
from tests.conftest import RunningServer, make_settings, start_server

PASSWORD = "a long enough password"
KEY_RE = re.compile(r"^hearth_[0-9a-f]{64}$")


async def add_user(server: RunningServer, name: str, role: Role = "member") -> None:
    await server.services.auth.create_user(LOCAL_ADMIN, name, PASSWORD, role)


async def token_for(server: RunningServer, name: str) -> dict[str, str]:
    async with server.client() as client:
        response = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def create_key(client: httpx.AsyncClient, headers: dict[str, str], **body: object) -> httpx.Response:
    return await client.post("/api/v1/keys", json=body, headers=headers)


async def me_with(client: httpx.AsyncClient, key: str, header: str = "bearer") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
    return await client.get("/api/v1/auth/me", headers=headers)


def foreign_record(raw: str, **fields: object) -> KeyRecord:
    hashed = token_hash(raw)
    values: dict[str, object] = {
        "name": "agbx-key-1",
        "hash_prefix": hash_prefix(hashed),
        "token_hash": hashed,
        "role": "member",
        "issued_at": "2024-01-01T00:00:00Z",
        "source": "agent-sandbox",
    }
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


def test_token_hash_is_sha256_hex_of_the_whole_key_and_prefix_its_first_16() -> None:
    raw = "hearth_" + "ab" * 32
    assert token_hash(raw) == hashlib.sha256(raw.encode()).hexdigest()
    assert hash_prefix(token_hash(raw)) == token_hash(raw)[:16]


async def test_member_creates_a_key_shown_once_that_authenticates(server: RunningServer) -> None:
    await add_user(server, "alice")
    headers = await token_for(server, "alice")
    async with server.client() as client:
        created = await create_key(client, headers, description="laptop", namespace="ns1", team="blue")
        body = created.json()
        by_bearer = await me_with(client, body["key"])
        by_header = await me_with(client, body["key"], "x-api-key")
        listed = await client.get("/api/v1/keys", headers=headers)
        one = await client.get(f"/api/v1/keys/{body['id']}", headers=headers)
    assert created.status_code == 201
    assert KEY_RE.match(body["key"])
    digest = hashlib.sha256(body["key"].encode()).hexdigest()
    assert body["hash_prefix"] == digest[:16]
    assert body["name"] == f"hearth-apikey-{digest[:16]}"
    assert (body["user"], body["role"], body["namespace"], body["team"]) == ("alice", "member", "ns1", "blue")
    assert body["issued_at"].endswith("Z") and body["expires_at"] is None and body["source"] == "local"
    assert by_bearer.json()["kind"] == by_header.json()["kind"] == "api_key"
    assert by_bearer.json()["name"] == "alice" and by_bearer.json()["key_id"] == body["id"]
    assert by_bearer.json()["namespace"] == "ns1"
    assert body["key"] not in listed.text and digest not in listed.text
    assert [k["id"] for k in listed.json()["keys"]] == [body["id"]]
    assert "key" not in one.json() and one.json()["description"] == "laptop"


async def test_key_is_stored_only_as_its_hash(server: RunningServer) -> None:
    await add_user(server, "bea")
    async with server.client() as client:
        raw = (await create_key(client, await token_for(server, "bea"))).json()["key"]
    dump = "\n".join(server.services.db.read_sync(lambda c: list(c.conn.iterdump())))
    assert raw not in dump
    assert hashlib.sha256(raw.encode()).hexdigest() in dump


async def test_list_shows_own_keys_to_members_and_all_keys_to_admins(server: RunningServer) -> None:
    await add_user(server, "root", "admin")
    await add_user(server, "cara")
    await add_user(server, "dan")
    cara, dan, root = [await token_for(server, n) for n in ("cara", "dan", "root")]
    async with server.client() as client:
        await create_key(client, cara)
        await create_key(client, dan)
        await create_key(client, root, user="dan")
        as_cara = (await client.get("/api/v1/keys", headers=cara)).json()["keys"]
        as_root = (await client.get("/api/v1/keys", headers=root)).json()["keys"]
        only_dan = (await client.get("/api/v1/keys?user=dan", headers=root)).json()["keys"]
        cara_asks_dan = await client.get("/api/v1/keys?user=dan", headers=cara)
        paged = (await client.get("/api/v1/keys?limit=1&after_id=2", headers=root)).json()["keys"]
        bad_limit = await client.get("/api/v1/keys?limit=0", headers=root)
    assert [k["user"] for k in as_cara] == ["cara"]
    assert {k["user"] for k in as_root} >= {"admin", "cara", "dan"}
    assert [k["user"] for k in only_dan] == ["dan", "dan"]
    assert cara_asks_dan.status_code == 403
    assert [k["id"] for k in paged] == [3]
    assert bad_limit.status_code == 422


async def test_members_cannot_create_read_or_revoke_keys_of_others(server: RunningServer) -> None:
    await add_user(server, "eve")
    await add_user(server, "fred")
    await add_user(server, "gus", "viewer")
    eve, fred, gus = [await token_for(server, n) for n in ("eve", "fred", "gus")]
    async with server.client() as client:
        fred_key = (await create_key(client, fred)).json()
        for_other = await create_key(client, eve, user="fred")
        read_other = await client.get(f"/api/v1/keys/{fred_key['id']}", headers=eve)
        revoke_other = await client.delete(f"/api/v1/keys/{fred_key['id']}", headers=eve)
        read_missing = await client.get("/api/v1/keys/987654", headers=eve)
        viewer_create = await create_key(client, gus)
        still_works = await me_with(client, fred_key["key"])
    assert for_other.status_code == 403
    # another user's key answers as a missing one does: key ids cannot be probed
    assert read_other.status_code == revoke_other.status_code == read_missing.status_code == 404
    assert viewer_create.status_code == 403
    assert viewer_create.json() == {"detail": "keys.create requires role member"}
    assert still_works.status_code == 200


async def test_key_role_cannot_exceed_the_user_role(server: RunningServer) -> None:
    await add_user(server, "root", "admin")
    await add_user(server, "hal")
    root, hal = await token_for(server, "root"), await token_for(server, "hal")
    async with server.client() as client:
        own_admin = await create_key(client, hal, role="admin")
        admin_for_member = await create_key(client, root, user="hal", role="admin")
        viewer_key = (await create_key(client, hal, role="viewer")).json()
        from_viewer_key = await create_key(client, {"X-API-Key": viewer_key["key"]})
    assert own_admin.status_code == admin_for_member.status_code == 422
    assert "exceeds" in own_admin.json()["detail"]
    assert viewer_key["role"] == "viewer"
    assert from_viewer_key.status_code == 403, "a viewer key cannot mint a member key"


async def test_create_refuses_bad_input(server: RunningServer) -> None:
    await add_user(server, "root", "admin")
    root = await token_for(server, "root")
    async with server.client() as client:
        unknown_user = await create_key(client, root, user="ghost")
        past = await create_key(client, root, expires_at="2001-01-01T00:00:00Z")
        naive = await create_key(client, root, expires_at="2099-01-01T00:00:00")
        garbage = await create_key(client, root, expires_at="tomorrow")
        unknown_field = await create_key(client, root, colour="red")
        too_long = await create_key(client, root, description="x" * 1025)
        bad_role = await create_key(client, root, role="tenant")
        anonymous = await create_key(client, {})
    assert unknown_user.status_code == 404
    assert [r.status_code for r in (past, naive, garbage, unknown_field, too_long, bad_role)] == [422] * 6
    assert past.json() == {"detail": "expires_at must be in the future"}
    assert anonymous.status_code == 401


async def test_revoked_key_is_refused_and_revocation_is_audited(server: RunningServer) -> None:
    await add_user(server, "ida")
    ida = await token_for(server, "ida")
    async with server.client() as client:
        key = (await create_key(client, ida)).json()
        revoked = await client.delete(f"/api/v1/keys/{key['id']}", headers=ida)
        again = await client.delete(f"/api/v1/keys/{key['id']}", headers=ida)
        refused = await me_with(client, key["key"])
        missing = await client.delete("/api/v1/keys/999999", headers=ida)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert refused.status_code == 401
    assert refused.json() == {"detail": "API key revoked"}
    assert missing.status_code == 404
    actions = [(e.action, e.resource) for e in await recent(server.services.db) if e.action.startswith("keys.")]
    assert ("keys.revoke", f"api_key:{key['id']}") in actions
    assert ("keys.create", f"api_key:{key['id']}") in actions


async def test_expired_key_is_refused(server: RunningServer) -> None:
    raw = "hearth_" + "01" * 32
    await add_user(server, "jon")
    await server.services.auth.keys.import_key(
        LOCAL_ADMIN, foreign_record(raw, user_name="jon", expires_at="2020-01-01T00:00:00+00:00", source="local")
    )
    async with server.client() as client:
        response = await me_with(client, raw)
    assert response.status_code == 401
    assert response.json() == {"detail": "API key expired"}


async def test_key_with_a_wrong_secret_for_a_valid_prefix_is_refused(server: RunningServer) -> None:
    raw = "hearth_" + "02" * 32
    real = token_hash(raw)
    tampered = real[:16] + ("0" if real[16] != "0" else "1") + real[17:]
    await add_user(server, "kai")
    await server.services.auth.keys.import_key(LOCAL_ADMIN, foreign_record(raw, token_hash=tampered, user_name="kai"))
    async with server.client() as client:
        response = await me_with(client, raw)
        malformed = await me_with(client, "hearth_" + "a" * 600, "x-api-key")
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid API key"}
    assert malformed.status_code == 401


async def test_foreign_agbx_key_authenticates_with_its_mapped_role(server: RunningServer) -> None:
    raw = "agbx_" + "cd" * 32
    auth = server.services.auth
    stored = await auth.keys.import_key(LOCAL_ADMIN, foreign_record(raw, role="tenant", namespace="team-a"))
    again = await auth.keys.import_key(LOCAL_ADMIN, foreign_record(raw, role="admin"))
    unknown_role = "agbx_" + "ef" * 32
    await auth.keys.import_key(LOCAL_ADMIN, foreign_record(unknown_role, name="agbx-key-2", role="superuser"))
    async with server.client() as client:
        response = await me_with(client, raw)
    principal = await auth.authenticate_key(unknown_role)
    assert again.id == stored.id and again.role == "tenant", "import is idempotent on the prefix"
    assert response.status_code == 200
    assert response.json()["role"] == "member" and response.json()["namespace"] == "team-a"
    assert principal.role == "viewer"


async def test_key_role_is_capped_by_its_user_and_fails_when_the_user_is_disabled(server: RunningServer) -> None:
    raw = "hearth_" + "03" * 32
    await add_user(server, "lou", "viewer")
    auth = server.services.auth
    await auth.keys.import_key(LOCAL_ADMIN, foreign_record(raw, role="admin", user_name="lou", source="local"))
    capped = await auth.authenticate_key(raw)
    await auth.set_disabled(LOCAL_ADMIN, "lou", True)
    with pytest.raises(Unauthenticated, match="owner is disabled"):
        await auth.authenticate_key(raw)
    assert capped.role == "viewer"


async def test_local_key_of_a_user_that_does_not_exist_is_refused(server: RunningServer) -> None:
    raw = "hearth_" + "04" * 32
    auth = server.services.auth
    await auth.keys.import_key(LOCAL_ADMIN, foreign_record(raw, user_name="gone", source="local"))
    with pytest.raises(Unauthenticated, match="owner no longer exists"):
        await auth.authenticate_key(raw)


async def test_import_refuses_an_inconsistent_prefix(server: RunningServer) -> None:
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="hash_prefix"):
        await server.services.auth.keys.import_key(
            LOCAL_ADMIN, foreign_record("agbx_x", hash_prefix="0123456789abcdef")
        )


async def test_per_user_key_limit_is_409(nursery: trio.Nursery, data_dir: Path) -> None:
    running = await start_server(nursery, make_settings(data_dir, auth={"max_keys_per_user": 2}))
    await add_user(running, "max")
    headers = await token_for(running, "max")
    async with running.client() as client:
        first = (await create_key(client, headers)).json()
        await create_key(client, headers)
        over = await create_key(client, headers)
        await client.delete(f"/api/v1/keys/{first['id']}", headers=headers)
        after_revoke = await create_key(client, headers)
    running.cancel_scope.cancel()
    assert over.status_code == 409
    assert over.json() == {"detail": "exceeded max keys per user (2)"}
    assert after_revoke.status_code == 201


async def test_future_expiry_is_normalized_to_utc_and_the_key_works(server: RunningServer) -> None:
    await add_user(server, "ned")
    headers = await token_for(server, "ned")
    async with server.client() as client:
        key = (await create_key(client, headers, expires_at="2099-06-01T12:00:00+02:00")).json()
        response = await me_with(client, key["key"])
    assert key["expires_at"] == "2099-06-01T10:00:00Z"
    assert response.status_code == 200
