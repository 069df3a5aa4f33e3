"""The calls every Hearth has (specs/calls.md §3): ``info``, ``backup``, ``prune``; in-process coroutine actions."""

from __future__ import annotations

import tarfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import trio

from core.actions import Action, ActionContext
from core.audit import now_utc, rfc3339
from core.call_catalogue import CallCatalogue, CallRequest, CallSpec
from core.principals import Role
from core.systems import SERVER, WORKSPACE
from storage import audit as audit_log
from storage import call_history
from storage.backup import snapshot_live

VERSION = "0.1.0"
STARTED = time.monotonic()

Body = Callable[[ActionContext, CallRequest], Awaitable[int]]


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
            return await body(ctx, request)

        owner = request.principal.name or request.principal.describe()
        return await request.services.actions.start_coroutine(run, owner=owner, name=f"call:{name}", hold_output=True)

    return CallSpec(name=name, description=description, start=start, role=role, kind="builtin")


async def _say(ctx: ActionContext, line: str) -> None:
    await ctx.write(line.encode("utf-8") + b"\n")


async def _info(ctx: ActionContext, request: CallRequest) -> int:
    """Counts of workspaces and servers are those of the systems registry the caller may see (the faces that
    add such systems register their kinds there; ``GET /api/v1/systems`` lists the same)."""
    svc = request.services
    running = sum(1 for a in svc.actions.list() if a.result is None)
    kinds = Counter(system.kind for system in await svc.systems.visible_to(request.principal))
    lines = [
        f"version: {VERSION}",
        "role: standalone",
        f"uptime_seconds: {int(time.monotonic() - STARTED)}",
        f"workspaces: {kinds[WORKSPACE]}",
        f"servers: {kinds[SERVER]}",
        f"actions_running: {running}",
    ]
    for line in lines:
        await _say(ctx, line)
    return 0


async def _backup(ctx: ActionContext, request: CallRequest) -> int:
    """A snapshot of the database (online backup API, integrity-checked) plus the data directory's own files
    (the JWT secret, action logs), in one ``backups/hearth-<time>-<random>.tar.gz``; the archive's path comes last."""
    svc = request.services
    target = svc.settings.data_path / "backups"
    await trio.to_thread.run_sync(lambda: target.mkdir(mode=0o700, exist_ok=True))
    await _say(ctx, f"backing up {svc.db.path} with the online backup API")
    snapshot: Path = await trio.to_thread.run_sync(snapshot_live, svc.db, target)
    await _say(ctx, "database snapshot written and checked; adding the data directory's files")
    archive, size = await trio.to_thread.run_sync(_archive, svc.settings.data_path, snapshot)
    await _say(ctx, f"archive written, {size} bytes")
    await _say(ctx, str(archive))
    return 0


def _archive(data_dir: Path, snapshot: Path) -> tuple[Path, int]:
    """``snapshot`` as ``hearth.db`` and the data dir's other files (not the live database, not backups)."""
    archive = snapshot.with_suffix(".tar.gz")
    partial = archive.with_suffix(".partial")
    skip = {"hearth.db", "hearth.db-wal", "hearth.db-shm", "hearth.lock", "backups"}
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(snapshot, arcname="hearth.db")
        for entry in sorted(data_dir.iterdir()):
            if entry.name not in skip:
                _add_present(tar, entry, entry.name)
    partial.chmod(0o600)
    partial.rename(archive)
    snapshot.unlink()
    return archive, archive.stat().st_size


def _add_present(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Add ``path`` (a directory with what it holds); a file removed meanwhile (a pruned action log) is left out."""
    try:
        tar.add(path, arcname=arcname, recursive=False)
        children = sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
    except FileNotFoundError:
        return
    for child in children:
        _add_present(tar, child, f"{arcname}/{child.name}")


async def _prune(ctx: ActionContext, request: CallRequest) -> int:
    svc = request.services
    before = len(svc.actions.list())
    svc.actions.prune()
    await _say(ctx, f"finished actions forgotten (with their logs): {before - len(svc.actions.list())}")
    days = svc.settings.storage.audit_retention_days
    cutoff = rfc3339(now_utc() - timedelta(days=days))
    await _say(ctx, f"audit rows older than {days} days removed: {await audit_log.delete_before(svc.db, cutoff)}")
    removed = await call_history.delete_ended_before(svc.db, cutoff)
    await _say(ctx, f"call records older than {days} days removed: {removed}")
    return 0
