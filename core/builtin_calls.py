"""The calls every Hearth has (specs/calls.md §3): ``info``, ``backup``, ``prune``; in-process coroutine actions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from core.actions import Action, ActionContext
from core.call_catalogue import CallCatalogue, CallRequest, CallSpec
from core.principals import Role
from core.services import Services

VERSION = "0.1.0"
STARTED = time.monotonic()

Body = Callable[[ActionContext, Services], Awaitable[int]]


def register_builtin_calls(catalogue: CallCatalogue) -> None:
    catalogue.register(
        _coroutine_call("info", "Version, node role, uptime and counts, one key: value a line", "viewer", _info)
    )
    catalogue.register(
        _coroutine_call("backup", "Online backup of the database into <data_dir>/backups", "admin", _backup)
    )
    catalogue.register(
        _coroutine_call("prune", "Apply the retention settings now; prints what it removed", "admin", _prune)
    )


def _coroutine_call(name: str, description: str, role: Role, body: Body) -> CallSpec:
    async def start(request: CallRequest) -> Action:
        async def run(ctx: ActionContext) -> int:
            return await body(ctx, request.services)

        owner = request.principal.name or request.principal.describe()
        return await request.services.actions.start_coroutine(run, owner=owner, name=f"call:{name}", hold_output=True)

    return CallSpec(name=name, description=description, start=start, role=role, kind="builtin")


async def _say(ctx: ActionContext, line: str) -> None:
    await ctx.write(line.encode("utf-8") + b"\n")


async def _info(ctx: ActionContext, svc: Services) -> int:
    running = sum(1 for a in svc.actions.list() if a.result is None)
    lines = [
        f"version: {VERSION}",
        "role: standalone",
        f"uptime_seconds: {int(time.monotonic() - STARTED)}",
        "workspaces: 0",
        "servers: 0",
        f"actions_running: {running}",
    ]
    for line in lines:
        await _say(ctx, line)
    return 0


async def _backup(ctx: ActionContext, svc: Services) -> int:
    target = svc.settings.data_path / "backups"
    await trio.to_thread.run_sync(lambda: target.mkdir(mode=0o700, exist_ok=True))
    await _say(ctx, f"backing up {svc.db.path} with the online backup API")
    path: Path = await trio.to_thread.run_sync(svc.db.backup_to, target)
    size = await trio.to_thread.run_sync(lambda: path.stat().st_size)
    await _say(ctx, f"checked integrity, {size} bytes")
    await _say(ctx, str(path))
    return 0


async def _prune(ctx: ActionContext, svc: Services) -> int:
    before = len(svc.actions.list())
    svc.actions.prune()
    removed = before - len(svc.actions.list())
    await _say(ctx, f"finished actions forgotten (with their logs): {removed}")
    return 0
