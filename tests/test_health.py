"""GET /healthz, GET /metrics, and the Containerfile whose HEALTHCHECK asks /healthz."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import trio

from core.principals import Principal, PrincipalKind
from tests.conftest import RunningServer, make_settings, start_server
from tests.test_storage import ROOT, clean_env

CONTAINERFILE = ROOT / "Containerfile"
PASSWORD = "a long enough password"


async def test_healthz_answers_ok_with_database_time(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/healthz")
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert body["status"] == "ok"
    assert isinstance(body["database_ms"], float) and body["database_ms"] >= 0


async def test_healthz_answers_503_when_the_database_fails(server: RunningServer) -> None:
    server.services.db.close()
    async with server.client() as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "detail": "database is closed"}


async def test_metrics_is_prometheus_text_with_requests_and_database_latency(server: RunningServer) -> None:
    await server.services.db.write(lambda conn: conn.execute("SELECT 1").fetchone())
    async with server.client() as client:
        await client.get("/healthz")
        await client.get("/no/such/route")
        await client.request("BREW", "/healthz")
        response = await client.get("/metrics")
    text = response.text
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'hearth_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'hearth_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'hearth_http_requests_total{method="OTHER",route="unmatched",status="405"} 1.0' in text
    assert re.search(r'hearth_database_latency_seconds_count\{op="read"\} [1-9]', text)
    assert re.search(r'hearth_database_latency_seconds_count\{op="write"\} [1-9]', text)
    for name in ("hearth_websockets_open", "hearth_actions_running"):
        assert f"# TYPE {name} gauge" in text


async def test_metrics_route_label_is_the_rule_not_the_path(server: RunningServer) -> None:
    async with server.client() as client:
        await client.get("/api/v1/keys/12345")
        await client.get("/api/v1/keys/67890")
        text = (await client.get("/metrics")).text
    assert "12345" not in text and "67890" not in text


async def test_metrics_private_refuses_anonymous_and_accepts_a_user(nursery: trio.Nursery, data_dir: Path) -> None:
    running = await start_server(nursery, make_settings(data_dir, server={"metrics_public": False}))
    admin = Principal(kind=PrincipalKind.USER, name="admin", role="admin", user_id=1)
    await running.services.auth.create_user(admin, "watcher", PASSWORD, "viewer")
    async with running.client() as client:
        anonymous = await client.get("/metrics")
        login = await client.post("/api/v1/auth/login", json={"username": "watcher", "password": PASSWORD})
        token = login.json()["access_token"]
        client.cookies.clear()
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    running.cancel_scope.cancel()
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "authentication required"}
    assert allowed.status_code == 200
    assert "hearth_http_requests_total" in allowed.text


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def healthcheck_argv() -> list[str]:
    (args,) = [rest for keyword, rest in containerfile_instructions() if keyword == "HEALTHCHECK"]
    return list(json.loads(args[args.index("CMD") + 3 :]))


def test_containerfile_runs_hearth_serve_as_non_root_with_data_volume() -> None:
    instructions = containerfile_instructions()
    keywords = [k for k, _ in instructions]
    first_from = dict(instructions)["FROM"]
    user = [rest for k, rest in instructions if k == "USER"][-1]
    entry = json.loads(dict(instructions)["ENTRYPOINT"]) + json.loads(dict(instructions)["CMD"])
    assert re.search(r"python:3\.11-slim", first_from)
    assert user.split(":")[0] not in ("root", "0")
    assert json.loads(dict(instructions)["VOLUME"]) == ["/data"]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert entry == ["hearth", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
    assert any(k == "RUN" and "pip install" in rest and " ." in rest for k, rest in instructions)
    assert "curl" not in " ".join(healthcheck_argv())


def test_containerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".containerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)


async def test_containerfile_healthcheck_passes_on_a_live_server_and_fails_without_one(server: RunningServer) -> None:
    argv = [sys.executable if arg == "python" else arg for arg in healthcheck_argv()]
    assert argv[1] == "-c", shlex.join(argv)
    env = clean_env(HEARTH_PORT=str(server.port))
    healthy = await trio.run_process(argv, env=env, check=False, capture_stderr=True)
    server.services.db.close()
    unhealthy = await trio.run_process(argv, env=env, check=False, capture_stderr=True)
    assert healthy.returncode == 0, healthy.stderr
    assert unhealthy.returncode != 0
    assert b"503" in unhealthy.stderr


def test_containerfile_healthcheck_fails_when_nothing_listens() -> None:
    argv = [sys.executable if arg == "python" else arg for arg in healthcheck_argv()]
    result = subprocess.run(argv, env=clean_env(HEARTH_PORT="1"), capture_output=True, timeout=30)
    assert result.returncode != 0
