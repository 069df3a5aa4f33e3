"""`hearth users ...` and `hearth keys ...` run as real subprocesses against a data directory, then a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import trio

from core.auth import Authenticator
from core.config import load_settings
from core.metrics import Metrics
from storage.database import Database
from tests.conftest import make_settings, start_server

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long enough password"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}


async def hearth(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[bytes]:
    """Run ``python app.py ARGS --data-dir D`` without blocking the event loop (a server may be running)."""
    argv = [sys.executable, "app.py", *args, "--data-dir", str(data_dir)]
    return await trio.run_process(
        argv, stdin=stdin.encode(), capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT, env=clean_env()
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


async def test_cli_created_key_works_against_the_server_until_revoked(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "data"
    user = await hearth(data, "users", "create", "bob", "--role", "member", "--password-stdin", stdin=PASSWORD + "\n")
    key = await hearth(data, "keys", "create", "--user", "bob", "--description", "ci", "--namespace", "ns")
    raw = out(key)
    running = await start_server(nursery, make_settings(data))
    async with running.client() as client:
        me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {raw.strip()}"})
        login = await client.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD})
        key_id = str(me.json()["key_id"])
        revoke = await hearth(data, "keys", "revoke", key_id)
        after = await client.get("/api/v1/auth/me", headers={"X-API-Key": raw.strip()})
    running.cancel_scope.cancel()
    assert user.returncode == 0, err(user)
    assert key.returncode == 0, err(key)
    assert re.fullmatch(r"hearth_[0-9a-f]{64}\n", raw), "the key alone on stdout"
    assert me.status_code == 200
    assert (me.json()["name"], me.json()["role"], me.json()["namespace"]) == ("bob", "member", "ns")
    assert login.status_code == 200
    assert revoke.returncode == 0 and out(revoke).startswith(f"revoked key {key_id} ")
    assert after.status_code == 401 and after.json() == {"detail": "API key revoked"}


async def test_cli_users_create_without_stdin_prints_a_password_that_logs_in(tmp_path: Path) -> None:
    created = await hearth(tmp_path, "users", "create", "carol", "--role", "viewer")
    listed = await hearth(tmp_path, "users", "list")
    password = out(created).strip()
    db = Database(tmp_path / "hearth.db")
    try:
        auth = Authenticator(db, load_settings({"data_dir": str(tmp_path)}, environ={}), Metrics())
        pair = await auth.login("carol", password)
    finally:
        db.close()
    assert created.returncode == 0
    assert len(out(created).splitlines()) == 1 and len(password) >= 18
    assert pair.access_token
    assert listed.returncode == 0
    header, row = out(listed).splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "DISABLED", "CREATED"]
    assert row.split()[1:4] == ["carol", "viewer", "no"]


async def test_cli_keys_list_shows_keys_without_secrets(tmp_path: Path) -> None:
    await hearth(tmp_path, "users", "create", "dora", "--password-stdin", stdin=PASSWORD)
    raw = out(
        await hearth(tmp_path, "keys", "create", "--user", "dora", "--expires-at", "2099-01-01T00:00:00Z")
    ).strip()
    listed = await hearth(tmp_path, "keys", "list")
    text = out(listed)
    assert listed.returncode == 0
    assert raw not in text and raw[7:] not in text
    assert text.splitlines()[0].split()[:4] == ["ID", "NAME", "USER", "ROLE"]
    assert "dora" in text and "2099-01-01T00:00:00Z" in text


async def test_cli_refuses_bad_input_with_one_line_and_the_right_status(tmp_path: Path) -> None:
    await hearth(tmp_path, "users", "create", "eric", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    cases = [
        (await hearth(tmp_path, "keys", "create", "--user", "ghost"), 1, "no such user ghost"),
        (await hearth(tmp_path, "keys", "create", "--user", "eric", "--expires-at", "soon"), 2, "RFC 3339"),
        (await hearth(tmp_path, "keys", "create", "--user", "eric", "--role", "admin"), 2, "exceeds"),
        (await hearth(tmp_path, "users", "create", "eric", "--password-stdin", stdin=PASSWORD), 1, "already exists"),
        (await hearth(tmp_path, "users", "create", "fay", "--password-stdin", stdin=""), 2, "no password"),
        (await hearth(tmp_path, "users", "create", "f y", "--password-stdin", stdin=PASSWORD), 2, "username must"),
        (await hearth(tmp_path, "keys", "revoke", "4242"), 1, "no API key 4242"),
    ]
    for result, status, message in cases:
        assert result.returncode == status, err(result)
        assert err(result).count("\n") == 1 and message in err(result)
        assert "Traceback" not in err(result)
        assert out(result) == ""
