"""Auth routes and Authenticator: login (JSON, form), JWT refusals, refresh rotation, logout, register, throttle."""

from __future__ import annotations

import base64
import hashlib
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio

from core.auth import LOCAL_ADMIN, Authenticator
from core.config import load_settings
from core.errors import ConfigError, Unauthenticated
from core.jwt_tokens import load_or_create_secret
from core.metrics import Metrics
from core.principals import Credential, CredentialKind, Role
from storage.audit import recent
from storage.database import Database
from tests.conftest import RunningServer, make_settings, start_server

PASSWORD = "a long enough password"


async def add_user(server: RunningServer, name: str, role: Role = "member", password: str = PASSWORD) -> None:
    await server.services.auth.create_user(LOCAL_ADMIN, name, password, role)


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"username": name, "password": password})


async def access_token(server: RunningServer, name: str) -> str:
    async with server.client() as client:
        response = await login(client, name)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_secret(server: RunningServer) -> bytes:
    return (server.data_dir / "jwt.secret").read_bytes()


def claims(sub: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "role": "admin", "iat": now, "exp": now + 600, "jti": "j", "typ": "access"}
    out.update(overrides)
    return out


def auth_failures(server: RunningServer, kind: str) -> float:
    value = server.services.metrics.registry.get_sample_value("hearth_auth_failures_total", {"kind": kind})
    return value or 0.0


async def test_login_json_returns_tokens_and_sets_a_strict_httponly_cookie(server: RunningServer) -> None:
    await add_user(server, "alice")
    async with server.client() as client:
        response = await login(client, "alice")
        me_by_cookie = await client.get("/api/v1/auth/me")
    body = response.json()
    cookie = response.headers["set-cookie"]
    assert response.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1800
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert cookie.startswith(f"hearth_access={body['access_token']};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert me_by_cookie.status_code == 200
    assert me_by_cookie.json()["name"] == "alice"


async def test_login_form_encoded_works_and_the_token_carries_the_claims(server: RunningServer) -> None:
    await add_user(server, "bob", "viewer")
    async with server.client() as client:
        response = await client.post("/api/v1/auth/login", data={"username": "bob", "password": PASSWORD})
        token = response.json()["access_token"]
        me = await client.get("/api/v1/auth/me", headers=bearer(token))
    decoded = jwt.decode(token, jwt_secret(server), algorithms=["HS256"])
    assert response.status_code == 200
    assert {"sub", "role", "iat", "exp", "jti", "typ"} <= set(decoded)
    assert decoded["sub"] == "bob" and decoded["role"] == "viewer" and decoded["typ"] == "access"
    assert decoded["exp"] - decoded["iat"] == 1800
    assert me.json() == {
        "kind": "user",
        "name": "bob",
        "role": "viewer",
        "user_id": me.json()["user_id"],
        "key_id": None,
        "namespace": "",
        "team": "",
    }


async def test_login_wrong_password_and_unknown_user_answer_the_same_401(server: RunningServer) -> None:
    await add_user(server, "carol")
    async with server.client() as client:
        wrong = await login(client, "carol", "not the password")
        unknown = await login(client, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "invalid username or password"}
    assert "set-cookie" not in wrong.headers
    assert auth_failures(server, "password") == 2
    entries = await recent(server.services.db, action="auth.login")
    assert [(e.principal, e.outcome) for e in entries] == [("user:nobody", "denied"), ("user:carol", "denied")]


async def test_login_malformed_bodies_are_400_and_422(server: RunningServer) -> None:
    async with server.client() as client:
        malformed = await client.post(
            "/api/v1/auth/login", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        missing = await client.post("/api/v1/auth/login", json={"username": "alice"})
        too_long = await login(client, "a" * 65)
    assert malformed.status_code == 400
    assert malformed.json()["detail"].startswith("malformed JSON")
    assert missing.status_code == 422
    assert too_long.status_code == 422


async def test_me_without_credentials_is_401(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/api/v1/auth/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "authentication required"}


async def test_expired_access_token_is_refused(server: RunningServer) -> None:
    await add_user(server, "dave")
    past = int(time.time()) - 3600
    token = jwt.encode(claims("dave", iat=past - 1800, exp=past), jwt_secret(server), algorithm="HS256")
    async with server.client() as client:
        response = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == {"detail": "access token expired"}
    assert auth_failures(server, "bearer") == 1


async def test_access_token_signed_with_another_secret_is_refused(server: RunningServer) -> None:
    await add_user(server, "erin")
    forged = jwt.encode(claims("erin"), b"x" * 32, algorithm="HS256")
    async with server.client() as client:
        response = await client.get("/api/v1/auth/me", headers=bearer(forged))
    async with server.client(cookies={"hearth_access": forged}) as client:
        cookie = await client.get("/api/v1/auth/me")
    assert response.status_code == cookie.status_code == 401
    assert response.json() == {"detail": "invalid access token"}


async def test_alg_none_and_other_algorithms_are_refused(server: RunningServer) -> None:
    await add_user(server, "frank")
    unsigned = jwt.encode(claims("frank"), None, algorithm="none")
    hs512 = jwt.encode(claims("frank"), jwt_secret(server) * 2, algorithm="HS512")
    async with server.client() as client:
        responses = [await client.get("/api/v1/auth/me", headers=bearer(t)) for t in (unsigned, hs512)]
    assert unsigned.endswith(".")
    assert [r.status_code for r in responses] == [401, 401]
    assert {r.json()["detail"] for r in responses} == {"invalid access token"}


async def test_token_of_a_refresh_kind_or_missing_claims_is_refused(server: RunningServer) -> None:
    await add_user(server, "gina")
    wrong_type = jwt.encode(claims("gina", typ="refresh"), jwt_secret(server), algorithm="HS256")
    no_jti = jwt.encode({k: v for k, v in claims("gina").items() if k != "jti"}, jwt_secret(server), "HS256")
    async with server.client() as client:
        responses = [await client.get("/api/v1/auth/me", headers=bearer(t)) for t in (wrong_type, no_jti)]
    assert [r.json()["detail"] for r in responses] == ["invalid access token"] * 2


async def test_bearer_that_is_neither_jwt_nor_key_is_refused(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/api/v1/auth/me", headers=bearer("opaque-garbage"))
    assert response.status_code == 401
    assert "neither an access token nor an API key" in response.json()["detail"]


async def test_access_token_of_a_disabled_user_is_refused(server: RunningServer) -> None:
    await add_user(server, "hank")
    token = await access_token(server, "hank")
    await server.services.auth.set_disabled(LOCAL_ADMIN, "hank", True)
    async with server.client() as client:
        response = await client.get("/api/v1/auth/me", headers=bearer(token))
        relogin = await login(client, "hank")
    assert response.status_code == 401
    assert "disabled or deleted" in response.json()["detail"]
    assert relogin.status_code == 401


async def test_basic_auth_checks_the_password(server: RunningServer) -> None:
    await add_user(server, "ivan")
    good = base64.b64encode(f"ivan:{PASSWORD}".encode()).decode()
    bad = base64.b64encode(b"ivan:wrong password").decode()
    async with server.client() as client:
        ok = await client.get("/api/v1/auth/me", headers={"Authorization": f"Basic {good}"})
        refused = await client.get("/api/v1/auth/me", headers={"Authorization": f"Basic {bad}"})
    assert ok.status_code == 200 and ok.json()["name"] == "ivan"
    assert refused.status_code == 401


async def test_jwt_secret_file_is_created_once_with_mode_0600(server: RunningServer) -> None:
    await add_user(server, "judy")
    await access_token(server, "judy")
    path = server.data_dir / "jwt.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32


async def test_refresh_rotates_and_reuse_of_the_old_token_is_refused(server: RunningServer) -> None:
    await add_user(server, "kim")
    async with server.client() as client:
        first = (await login(client, "kim")).json()
        rotated = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        second = rotated.json()
        reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        after_reuse = await client.post("/api/v1/auth/refresh", data={"refresh_token": second["refresh_token"]})
        me = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert rotated.status_code == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert me.json()["name"] == "kim"
    assert reuse.status_code == 401
    assert reuse.json() == {"detail": "refresh token revoked"}
    assert after_reuse.status_code == 401, "reuse of a rotated token revokes the whole family"


async def test_refresh_unknown_or_oversized_token_is_refused(server: RunningServer) -> None:
    async with server.client() as client:
        unknown = await client.post("/api/v1/auth/refresh", json={"refresh_token": "not-a-token"})
        oversized = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 600})
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "invalid refresh token"}
    assert oversized.status_code == 422


async def test_refresh_token_is_stored_only_as_its_sha256(server: RunningServer) -> None:
    await add_user(server, "lena")
    async with server.client() as client:
        token = (await login(client, "lena")).json()["refresh_token"]
    stored = await server.services.db.read(lambda c: [r[0] for r in c.execute("SELECT token_hash FROM refresh_tokens")])
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]


async def test_logout_revokes_the_refresh_token_and_clears_the_cookie(server: RunningServer) -> None:
    await add_user(server, "mona")
    async with server.client() as client:
        tokens = (await login(client, "mona")).json()
        out = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
        again = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
        refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        me = await client.get("/api/v1/auth/me")
    assert out.status_code == 204
    assert 'hearth_access=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    assert again.status_code == 204
    assert refresh.status_code == 401
    assert me.status_code == 401, "the cookie was cleared"


async def test_logout_all_revokes_every_session_of_the_user(server: RunningServer) -> None:
    await add_user(server, "nina")
    async with server.client() as client:
        one = (await login(client, "nina")).json()
        two = (await login(client, "nina")).json()
        out = await client.post("/api/v1/auth/logout", json={"all": True}, headers=bearer(two["access_token"]))
        empty = await client.post("/api/v1/auth/logout")
        refreshes = [
            await client.post("/api/v1/auth/refresh", json={"refresh_token": t["refresh_token"]}) for t in (one, two)
        ]
    assert out.status_code == 204
    assert empty.status_code == 204
    assert [r.status_code for r in refreshes] == [401, 401]


async def test_logout_with_an_unknown_refresh_token_is_401(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.post("/api/v1/auth/logout", json={"refresh_token": "never-issued"})
    assert response.status_code == 401


async def test_register_is_admin_only_by_default(server: RunningServer) -> None:
    await add_user(server, "root", "admin")
    await add_user(server, "oscar", "member")
    new = {"username": "pat", "password": PASSWORD, "role": "viewer"}
    async with server.client() as client:
        anonymous = await client.post("/api/v1/auth/register", json=new)
        member = await client.post(
            "/api/v1/auth/register", json=new, headers=bearer(await access_token(server, "oscar"))
        )
        admin_headers = bearer(await access_token(server, "root"))
        created = await client.post("/api/v1/auth/register", json=new, headers=admin_headers)
        duplicate = await client.post("/api/v1/auth/register", json=new, headers=admin_headers)
        pat = await login(client, "pat")
    assert anonymous.status_code == 401
    assert member.status_code == 403
    assert created.status_code == 201
    assert created.json()["username"] == "pat" and created.json()["role"] == "viewer"
    assert "password" not in created.text and "argon2" not in created.text
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": "user pat already exists"}
    assert pat.status_code == 200
    entries = await recent(server.services.db, action="users.create")
    assert entries[0].resource == "user:pat" and entries[0].principal == "user:root"


@pytest.mark.parametrize(
    "body",
    [
        {"username": "bad name", "password": PASSWORD},
        {"username": "a" * 65, "password": PASSWORD},
        {"username": "quinn", "password": "short"},
        {"username": "quinn", "password": "x" * 1025},
        {"username": "quinn", "password": PASSWORD, "role": "owner"},
        {"username": "quinn", "password": PASSWORD, "extra": 1},
    ],
)
async def test_register_refuses_bad_input_with_422(server: RunningServer, body: dict[str, Any]) -> None:
    await add_user(server, "root", "admin")
    async with server.client() as client:
        response = await client.post(
            "/api/v1/auth/register", json=body, headers=bearer(await access_token(server, "root"))
        )
    assert response.status_code == 422, response.text


async def test_open_registration_lets_anyone_create_members_but_not_admins(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    running = await start_server(nursery, make_settings(data_dir, auth={"open_registration": True}))
    async with running.client() as client:
        member = await client.post("/api/v1/auth/register", json={"username": "rita", "password": PASSWORD})
        admin = await client.post(
            "/api/v1/auth/register", json={"username": "sam", "password": PASSWORD, "role": "admin"}
        )
        form = await client.post(
            "/api/v1/auth/register", data={"username": "tess", "password": PASSWORD, "role": "viewer"}
        )
        rita = await client.post(
            "/api/v1/auth/register",
            json={"username": "sam", "password": PASSWORD, "role": "admin"},
            headers=bearer((await login(client, "rita")).json()["access_token"]),
        )
    running.cancel_scope.cancel()
    assert member.status_code == 201 and member.json()["role"] == "member"
    assert admin.status_code == 401
    assert form.status_code == 201 and form.json()["role"] == "viewer"
    assert rita.status_code == 403


async def test_cookie_is_secure_when_configured(nursery: trio.Nursery, data_dir: Path) -> None:
    running = await start_server(nursery, make_settings(data_dir, auth={"cookie_secure": True}))
    await add_user(running, "uma")
    async with running.client() as client:
        response = await login(client, "uma")
    running.cancel_scope.cancel()
    assert "Secure" in response.headers["set-cookie"]


async def test_failed_logins_are_throttled_per_username_with_retry_after(server: RunningServer) -> None:
    await add_user(server, "vera")
    await add_user(server, "walt")
    async with server.client() as client:
        failures = [await login(client, "vera", "wrong password") for _ in range(10)]
        throttled = await login(client, "vera", PASSWORD)
        other = await login(client, "walt")
    assert [r.status_code for r in failures] == [401] * 10
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= 300
    assert "too many failed logins" in throttled.json()["detail"]
    assert other.status_code == 200


async def test_authenticate_counts_failures_by_credential_kind(server: RunningServer) -> None:
    auth = server.services.auth
    for credential in (Credential(CredentialKind.COOKIE, "a.b.c"), Credential(CredentialKind.API_KEY, "hearth_00")):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(credential)
    with pytest.raises(Unauthenticated, match="credential too long"):
        await auth.authenticate(Credential(CredentialKind.BEARER, "x" * 10_000))
    assert auth_failures(server, "cookie") == 1
    assert auth_failures(server, "api_key") == 1
    assert auth_failures(server, "bearer") == 1


async def test_first_admin_is_created_once_and_its_credentials_work(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    db = Database(tmp_path / "hearth.db")
    try:
        auth = Authenticator(db, settings, Metrics())
        first = await auth.ensure_first_admin()
        again = await auth.ensure_first_admin()
        restarted = await Authenticator(db, settings, Metrics()).ensure_first_admin()
        assert first is not None and again is None and restarted is None
        assert first.name == "admin" and len(first.password) >= 18
        key_principal = await auth.authenticate_key(first.api_key)
        pair = await auth.login("admin", first.password)
        user_principal = await auth.authenticate(Credential(CredentialKind.BEARER, pair.access_token))
        users = await auth.list_users(LOCAL_ADMIN)
    finally:
        db.close()
    assert key_principal.role == "admin" and key_principal.name == "admin"
    assert user_principal.role == "admin"
    assert [(u.name, u.role) for u in users] == [("admin", "admin")]


async def test_serve_prints_first_credentials_only_on_the_first_start(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        async with trio.open_nursery() as inner:
            running = await start_server(inner, make_settings(data_dir))
            running.cancel_scope.cancel()
    printed = capsys.readouterr().out
    assert printed.count("password:") == 1
    assert printed.count("API key:  hearth_") == 1


def test_jwt_secret_is_created_once_and_a_short_configured_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["jwt.secret"]
    short = tmp_path / "short.secret"
    short.write_bytes(b"too short")
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret_file: .* must hold at least 32 bytes"):
        load_or_create_secret(short)
