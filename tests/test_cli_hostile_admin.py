"""`hearth users create` / `hearth keys revoke` with bad input must refuse with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import RunningServer, api_key_for

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = b"a long enough password\n"


def hearth(data_dir: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"HEARTH_LOG_LEVEL": "warning"}
    argv = [sys.executable, "app.py", *args]
    result = subprocess.run(argv, cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(argv, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_users_create_refuses_a_name_with_a_trailing_newline(tmp_path: Path) -> None:
    """core/passwords.py USERNAME_PATTERN `^[A-Za-z0-9_.-]+$` with re.match: `$` also matches before a final
    newline, so "bob\\n" is accepted: a second user that looks exactly like "bob" (and breaks `users list`)."""
    data = str(tmp_path / "data")
    result = hearth(tmp_path, "users", "create", "--password-stdin", "--data-dir", data, "--", "bob\n", stdin=PASSWORD)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("hearth: username must be")


def test_users_create_with_a_password_that_is_not_utf8_fails_with_one_line(tmp_path: Path) -> None:
    """handlers/cli_admin.py:25 reads stdin as text; the undecodable bytes become surrogates and argon2's
    encode() raises UnicodeEncodeError: a traceback instead of `hearth: ...`."""
    data = str(tmp_path / "data")
    stdin = b"\xff\xfe a long enough password\n"
    result = hearth(tmp_path, "users", "create", "dan", "--password-stdin", "--data-dir", data, stdin=stdin)
    assert "Traceback" not in result.stderr
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("hearth: ") and result.stderr.count("\n") == 1


def test_keys_revoke_of_an_id_beyond_sqlite_integers_fails_with_one_line(tmp_path: Path) -> None:
    """argparse's type=int accepts any size; sqlite3 raises OverflowError: a traceback."""
    data = str(tmp_path / "data")
    result = hearth(tmp_path, "keys", "revoke", "99999999999999999999999", "--data-dir", data)
    assert "Traceback" not in result.stderr
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("hearth: ")


async def test_http_revoke_of_an_id_beyond_sqlite_integers_is_not_a_500(server: RunningServer) -> None:
    """The same OverflowError behind DELETE /api/v1/keys/<int:key_id>: 500 internal error instead of 404."""
    key = await api_key_for(server, "alice", "admin")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await client.delete("/api/v1/keys/99999999999999999999999", headers={"X-API-Key": key})
    assert response.status_code in (404, 422), response.text
