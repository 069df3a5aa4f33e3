"""Idle websockets: server memory per connection with a process waiting on stdin, for two faces.

``idle_calls``: ``WS /api/v1/ws/``, each connection sends one ``CallMessage`` for an administrator-defined
``cat`` command. ``idle_exec``: ``WS /api/v1/actions/exec?argv=cat``, each connection starts ``cat`` by its
upgrade alone. One client process (this one, trio-websocket) opens N connections and keeps them open, so N
``cat`` processes wait on their stdin. The server's ``VmRSS`` is read before (after a warm-up round, so one-time
allocations are not counted) and once all N ``cat`` processes run and the server is quiet; the difference over
N is what an idle connection costs it. The ``cat`` processes are counted apart (their memory is not the
server's). Then every client ends its stdin (``{"signal":"close"}``, or an empty BINARY message for exec); each
must end as the face says (``{"success":true}`` then close 1000, or close 1000 with ``{"exit_code":0}``) and
every ``cat`` must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from bench.calls import write_config
from bench.harness import (
    BenchError,
    Hearth,
    cpu_seconds,
    print_table,
    raise_nofile,
    rss_bytes,
    run_hearth,
    temp_dir,
)

CALL_NAME = "wait"
BUDGET_BYTES = 40_000  # specs/calls.md §5: under 40 KB of server memory per idle call
WARMUP_CALLS = 20
OPEN_AT_ONCE = 64  # handshakes in flight at a time
SETTLE_SECONDS = 1.0
QUIET_CPU_SECONDS = 0.02  # server CPU per SETTLE_SECONDS under which it counts as settled
PHASE_TIMEOUT = 120.0  # seconds any one phase (open all, release all) may take
FDS_PER_CALL = 8  # generous: socket, stdin/stdout/stderr pipes, the action's log, pidfd, ...
CALL = json.dumps({"call": CALL_NAME}).encode()
CLOSE_STDIN = json.dumps({"signal": "close"}).encode()
SUCCESS = {"success": True}
EXEC_SUCCESS = 'close 1000 {"exit_code":0}'


@dataclass(frozen=True)
class Face:
    """How one idle connection of a face is opened and ended, and what a good end is."""

    name: str
    path: str
    first_message: bytes | None  # sent right after the handshake
    end_message: bytes  # closes the process's stdin
    success: object  # what ``ended`` returns for a good end

    async def ended(self, ws: WebSocketConnection) -> list[object]:
        """After ``end_message``: the result frame and the close (calls), or the close alone (exec)."""
        if self.first_message is not None:
            return [json.loads(await ws.get_message()), *await closed_with(ws)]
        try:
            extra = await ws.get_message()
        except ConnectionClosed as e:
            return [f"close {e.reason.code} {e.reason.reason}" if e.reason is not None else "close ?"]
        await ws.aclose()
        return [f"before the close: {extra!r}"]


CALLS = Face("idle_calls", "/api/v1/ws/", CALL, CLOSE_STDIN, SUCCESS)
EXEC = Face("idle_exec", "/api/v1/actions/exec?argv=cat", None, b"", EXEC_SUCCESS)


@dataclass
class ProcessCount:
    """The ``cat`` processes the server started: how many, their pids, and their summed RSS."""

    pids: list[int]
    rss: int

    @property
    def count(self) -> int:
        return len(self.pids)


def children(parent: int, comm: str) -> ProcessCount:
    """The processes named ``comm`` whose parent is ``parent`` (scanned from /proc)."""
    pids, rss = [], 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if name == comm and int(rest[1]) == parent:
                pids.append(int(entry.name))
                rss += rss_bytes(int(entry.name))
        except (OSError, ValueError, BenchError):
            continue  # gone meanwhile
    return ProcessCount(pids, rss)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError(f"no open-file limit for pid {pid}")


@dataclass
class Snapshot:
    rss: int
    fds: int
    cats: ProcessCount


def snapshot(pid: int) -> Snapshot:
    return Snapshot(rss_bytes(pid), open_fds(pid), children(pid, "cat"))


@dataclass
class Round:
    """N idle calls held open, released together; what each client saw."""

    hearth: Hearth
    count: int
    face: Face
    opened: int = 0
    results: list[object] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    early: int = 0  # calls the server answered before the release (refused, or failed)
    waiting: set[trio.CancelScope] = field(default_factory=set)
    released: bool = False
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(OPEN_AT_ONCE))

    def settled(self, running: int) -> bool:
        """Every client has its answer: a call running, a connection error, or an early result."""
        connect_errors = len(self.errors) - self.early
        return self.opened + connect_errors >= self.count and running >= self.opened - self.early

    def release(self) -> None:
        self.released = True
        for scope in self.waiting:
            scope.cancel()

    @property
    def url(self) -> str:
        return f"{self.hearth.ws_url}{self.face.path}"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self.hearth.api_key}".encode())]


async def one_call(r: Round, nursery: trio.Nursery) -> None:
    """Connect (and send the call), wait for the release, end stdin, read how the connection ended."""
    try:
        async with r.limiter:
            ws = await connect_websocket_url(nursery, r.url, extra_headers=r.headers)
            if r.face.first_message is not None:
                await ws.send_message(r.face.first_message)
        r.opened += 1
        if early := await wait_release(r, ws):
            r.errors.append(f"answered before the release: {early!r}")
            r.early += 1
            return
        await ws.send_message(r.face.end_message)
        r.results.extend(await r.face.ended(ws))
    except Exception as e:  # a refused or broken connection is a finding, reported with the rest
        r.errors.append(f"{type(e).__name__}: {e}")


async def wait_release(r: Round, ws: WebSocketConnection) -> bytes | str | None:
    """Wait for the release; a message from the server before it (a call refused, or failed) is returned."""
    with trio.CancelScope() as scope:
        r.waiting.add(scope)
        if r.released:
            scope.cancel()
        try:
            return await ws.get_message()
        except ConnectionClosed as e:
            return f"closed: {e.reason}"
        finally:
            r.waiting.discard(scope)
    return None


async def closed_with(ws: WebSocketConnection) -> list[object]:
    """Nothing more after the result: the server's close, with code 1000 (else what came instead)."""
    try:
        extra = await ws.get_message()
    except ConnectionClosed as e:
        code = e.reason.code if e.reason is not None else None
        return [] if code == 1000 else [f"close {code}"]
    await ws.aclose()
    return [f"after the result: {extra!r}"]


async def wait_for_cats(pid: int, count: int, r: Round | None = None) -> None:
    """Until exactly ``count`` ``cat`` children run (bounded by PHASE_TIMEOUT; errors end it early)."""
    with trio.move_on_after(PHASE_TIMEOUT):
        while (running := children(pid, "cat").count) != count:
            if r is not None and r.errors and r.settled(running):
                return  # some calls failed: the others all run
            await trio.sleep(0.2)
        return
    clients = f"; clients: {r.opened} calls sent, {len(r.errors)} errors {r.errors[:2]}" if r is not None else ""
    raise BenchError(
        f"{children(pid, 'cat').count} cat processes after {PHASE_TIMEOUT:.0f} s, expected {count}{clients}"
    )


async def settle(pid: int) -> None:
    """Until the server is quiet: a cat running is not yet a call set up (its audit and process-group rows
    may still be queued for the database), so wait until a SETTLE_SECONDS period costs almost no CPU."""
    with trio.move_on_after(PHASE_TIMEOUT):
        while True:
            cpu = cpu_seconds(pid)
            await trio.sleep(SETTLE_SECONDS)
            if cpu_seconds(pid) - cpu < QUIET_CPU_SECONDS:
                return
    raise BenchError(f"the server did not settle within {PHASE_TIMEOUT:.0f} s")


@dataclass
class Measured:
    face: Face
    count: int
    before: Snapshot
    held: Snapshot
    after: Snapshot
    open_seconds: float
    release_seconds: float
    fd_limit: int
    errors: list[str]
    failed_results: list[object]

    @property
    def per_call(self) -> float:
        """Bytes of server RSS per call that was running when measured."""
        return (self.held.rss - self.before.rss) / max(1, self.held.cats.count)


async def hold(hearth: Hearth, face: Face, count: int, *, measure: bool) -> Measured | None:
    """Open ``count`` idle connections, optionally measure while they are held, release them, check the ends."""
    pid, r = hearth.pid, Round(hearth, count, face)
    await settle(pid)
    before = snapshot(pid)
    async with trio.open_nursery() as nursery:
        start = time.monotonic()
        for _ in range(count):
            nursery.start_soon(one_call, r, nursery)
        await wait_for_cats(pid, count, r)
        await settle(pid)
        open_seconds = time.monotonic() - start - SETTLE_SECONDS
        held = snapshot(pid)
        start = time.monotonic()
        r.release()
    await wait_for_cats(pid, 0)
    await settle(pid)
    release_seconds = time.monotonic() - start - SETTLE_SECONDS
    failed = [res for res in r.results if res != face.success]
    if not measure:
        if r.errors or failed:
            raise BenchError(f"warm-up calls failed: {(r.errors + failed)[:3]}")
        return None
    after = snapshot(pid)
    return Measured(face, count, before, held, after, open_seconds, release_seconds, fd_limit(pid), r.errors, failed)


async def measure_async(hearth: Hearth, face: Face, count: int) -> Measured:
    with trio.fail_after(4 * PHASE_TIMEOUT):
        await hold(hearth, face, WARMUP_CALLS, measure=False)
        measured = await hold(hearth, face, count, measure=True)
    assert measured is not None
    return measured


def raise_bench_error(group: BaseExceptionGroup[BaseException]) -> None:
    """A BenchError from inside the client's nurseries, raised as itself."""
    found = [e for e in leaves(group) if isinstance(e, BenchError)]
    if found:
        raise BenchError("; ".join(str(e) for e in found)) from group


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for e in group.exceptions for leaf in (leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


def kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL any of ``pids`` (the ``cat`` processes this benchmark made the server start) still alive."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def measure(face: Face, count: int, workdir: Path) -> tuple[Measured, list[int]]:
    nofile = count * FDS_PER_CALL + 256
    raise_nofile(count + 256)  # this client: one socket a call
    config = write_config(workdir / "hearth.toml", {CALL_NAME: ["cat"]}, limit=max(2 * count, 256))
    with run_hearth(workdir, config=config, nofile=nofile) as hearth:
        try:
            measured = trio.run(measure_async, hearth, face, count)
        except BaseExceptionGroup as group:
            raise_bench_error(group)
            raise
        except trio.TooSlowError:
            raise BenchError(f"{face.name} took longer than {4 * PHASE_TIMEOUT:.0f} s") from None
        finally:
            seen = children(hearth.pid, "cat").pids
    survivors = kill_leftovers(seen)
    return measured, survivors


def report(m: Measured, survivors: list[int]) -> None:
    mib = 2**20
    rows = [
        ["server VmRSS before", f"{m.before.rss / mib:.1f} MiB", f"{m.before.fds}", f"{m.before.cats.count}"],
        [f"with {m.count:,} idle sockets", f"{m.held.rss / mib:.1f} MiB", f"{m.held.fds}", f"{m.held.cats.count}"],
        ["after all ended", f"{m.after.rss / mib:.1f} MiB", f"{m.after.fds}", f"{m.after.cats.count}"],
    ]
    print_table(
        f"{m.face.name}: {m.count:,} websockets on {m.face.path}, `cat` waiting on stdin, one trio-websocket client",
        ["server", "VmRSS", "open fds", "cat procs"],
        rows,
    )
    verdict = "ok" if m.per_call < BUDGET_BYTES else "OVER BUDGET"
    per_call = f"{m.per_call / 1000:.1f} KB ({m.per_call / 1024:.1f} KiB)"
    print(f"server memory per idle websocket: {per_call}, budget < 40 KB: {verdict}")
    fds = (m.held.fds - m.before.fds) / max(1, m.held.cats.count)
    print(
        f"fds per websocket: {fds:.1f} (server limit {m.fd_limit}); "
        f"cat processes: {m.held.cats.count} using {m.held.cats.rss / mib:.0f} MiB RSS in all (not the server's); "
        f"all set up in {m.open_seconds:.1f} s, all ended in {m.release_seconds:.1f} s (to a quiet server)"
    )
    if m.errors or m.failed_results or survivors:
        print(
            f"problems: {len(m.errors)} client errors {m.errors[:3]}, {len(m.failed_results)} failed results "
            f"{m.failed_results[:3]}, {len(survivors)} cat processes killed after the server stopped"
        )


def run(*, calls: int, face: Face = CALLS) -> dict[str, float]:
    with temp_dir() as workdir:
        measured, survivors = measure(face, calls, workdir)
    report(measured, survivors)
    if measured.errors or measured.failed_results:
        raise BenchError(f"{face.name}: {len(measured.errors)} client errors, {len(measured.failed_results)} failures")
    return {f"{face.name}_kb": round(measured.per_call / 1000, 1)}
