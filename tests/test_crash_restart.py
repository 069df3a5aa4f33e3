"""A kill -9 of a real server leaves process groups the next start reaps; SIGTERM ends it all."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.test_hot_ws import alive
from tests.test_storage import ServeProcess, admin_api_key

IGNORE_TERM = "trap '' TERM; sleep 300 & echo $! > {pid}; wait"


def start_action(server: ServeProcess, key: str, argv: list[str]) -> str:
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=10) as client:
        response = client.post("/api/v1/actions", json={"argv": argv})
        assert response.status_code == 201, response.text
        action_id: str = response.json()["id"]
    return action_id


def wait_pid(path: Path) -> int:
    for _ in range(200):  # bounded: ~10 s
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the action never wrote its pid")


def test_kill_9_then_restart_reaps_the_orphaned_group(tmp_path: Path, serve_processes: list[ServeProcess]) -> None:
    first = ServeProcess(tmp_path / "data")
    serve_processes.append(first)
    first.wait_listening()
    key = admin_api_key(first.stdout_lines)
    start_action(first, key, ["sh", "-c", IGNORE_TERM.format(pid=tmp_path / "pid")])
    child = wait_pid(tmp_path / "pid")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert alive(child)  # the crash left it
    second = ServeProcess(tmp_path / "data", env=None)
    serve_processes.append(second)
    second.wait_listening()
    still = alive(child)
    assert second.stop() == 0
    assert not still, "the restart did not reap the group a crash left"
    assert not list((tmp_path / "data" / "actions").glob("*.log"))


def test_sigterm_ends_a_server_with_a_term_ignoring_action(tmp_path: Path, serve_processes: list[ServeProcess]) -> None:
    server = ServeProcess(tmp_path / "data")
    serve_processes.append(server)
    server.wait_listening()
    start_action(server, admin_api_key(server.stdout_lines), ["sh", "-c", IGNORE_TERM.format(pid=tmp_path / "pid")])
    child = wait_pid(tmp_path / "pid")
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    assert not alive(child)
