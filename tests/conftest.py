"""Shared fixtures: a real Hearth server on 127.0.0.1 port 0 with its own data directory, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import app
from core.config import Settings, load_settings
from core.services import Services


@dataclass
class RunningServer:
    """A server started in-process by the ``server`` fixture."""

    services: Services
    base_url: str
    data_dir: Path
    cancel_scope: trio.CancelScope

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http") :]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10, **kwargs)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback, port 0, short kill grace, nothing from the environment."""
    flags: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir)}
    flags.update(overrides)
    flags.setdefault("actions", {"kill_grace_seconds": 1.0})
    return load_settings(flags, environ={})


async def start_server(nursery: trio.Nursery, settings: Settings) -> RunningServer:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await app.serve(settings, task_status=task_status)

    svc, binds = await nursery.start(run)
    return RunningServer(svc, binds[0], settings.data_path, scope)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery, make_settings(data_dir))
    yield running
    running.cancel_scope.cancel()


@pytest.fixture
def serve_processes() -> Iterator[list[Any]]:
    """``tests.test_storage.ServeProcess`` servers started by a test; any still running at the end are killed."""
    started: list[Any] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
async def calls_server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    """A server with the test commands of the call API (tests/calls_support.py)."""
    from tests.calls_support import start_calls_server  # it builds on this module

    running = await start_calls_server(nursery, data_dir)
    yield running
    running.cancel_scope.cancel()


@pytest.fixture
async def admin(calls_server: RunningServer) -> str:
    """An admin's API key on ``calls_server`` (modules about other servers define their own ``admin``)."""
    return await api_key_for(calls_server, "ada", "admin")


async def api_key_for(server: RunningServer, name: str, role: str = "member") -> str:
    """Create user ``name`` with ``role`` and return a fresh API key of theirs (no login round trip)."""
    from core.api_keys import NewKey
    from core.auth import LOCAL_ADMIN

    auth = server.services.auth
    await auth.create_user(LOCAL_ADMIN, name, "a long enough password", role)  # type: ignore[arg-type]
    created = await auth.keys.create(LOCAL_ADMIN, NewKey(user=name))
    return created.raw
