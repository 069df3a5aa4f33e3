"""Process groups (Linux): spawn in a new session, watch the leader, empty the group, reap a crash's orphans."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import select
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import msgspec
import trio

from core.errors import ProcessStartError
from core.output import Stream
from core.spawn import Child, spawn_child
from storage import process_groups
from storage.database import Database
from storage.process_groups import ProcessGroupRecord

log = logging.getLogger("hearth.processes")

PROC = Path("/proc")
BOOT_ID_PATH = PROC / "sys/kernel/random/boot_id"
POLL_SECONDS = 0.02
AFTER_KILL_SECONDS = 5.0  # how long SIGKILLed processes get to vanish before we stop watching
Publish = Callable[[Stream, bytes], Awaitable[None]]


class ProcessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run. ``env`` is added to Hearth's own environment, or is the whole environment when
    ``inherit_env`` is false; ``timeout`` cancels the action after that many seconds. Invalid values raise
    ProcessStartError (a 422 at the REST edge)."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    inherit_env: bool = True
    merge_stderr: bool = False  # stderr into the stdout pipe (2>&1): one pipe, one pump, arrival order kept
    shown_argv: list[str] | None = None  # argv as recorded and logged (secret arguments replaced); default argv

    @property
    def shown(self) -> list[str]:
        return self.shown_argv if self.shown_argv is not None else self.argv

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ProcessStartError("argv must name a program")
        env = self.env or {}
        if any("\0" in text for text in [*self.argv, self.cwd or "", *env.keys(), *env.values()]):
            raise ProcessStartError("argv, cwd and env must not contain NUL characters")
        if any(not key or "=" in key for key in env):
            raise ProcessStartError("environment variable names must be non-empty and contain no '='")
        if self.timeout is not None and not self.timeout > 0:
            raise ProcessStartError("timeout must be greater than 0")


def start_error(program: str, e: OSError) -> str:
    """The result message of a process that could not be started (missing program or cwd, permissions)."""
    where = f" ({e.filename})" if e.filename else ""
    return f"cannot start {program!r}: {e.strerror or e}{where}"


@functools.cache
def boot_id() -> str:
    """This boot's id: a pgid recorded during another boot names nothing of ours."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), or None when the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def scan_groups() -> dict[int, list[int]]:
    """One pass over /proc: process group -> its live (non-zombie) members."""
    groups: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[0] != "Z":
                groups.setdefault(int(fields[2]), []).append(int(entry.name))
    return groups


class GroupScanner:
    """Answers "who is left in group G?" for many callers with shared /proc scans: a caller is answered by the
    first scan that *starts* after it asked (so no answer predates the question), and every caller waiting at
    that moment shares it. A thousand calls ending together cost a few scans, not a thousand."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, dict[int, list[int]]]] = []
        self._scanning = False
        self._scan_done = trio.Event()

    async def members(self, pgid: int) -> list[int]:
        answer: dict[int, list[int]] = {}
        self._waiting.append((pgid, answer))
        while pgid not in answer:
            if self._scanning:
                await self._scan_done.wait()
            else:
                await self._scan()
        return answer[pgid]

    async def _scan(self) -> None:
        self._scanning = True
        batch, self._waiting = self._waiting, []
        try:
            groups = await trio.to_thread.run_sync(scan_groups)
            for pgid, answer in batch:
                answer[pgid] = groups.get(pgid, [])
        finally:
            self._waiting[:0] = [(g, a) for g, a in batch if g not in a]  # a cancelled scan: ask again
            self._scanning = False
            self._scan_done.set()
            self._scan_done = trio.Event()


SCANNER = GroupScanner()


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the whole group; False when nothing in it could be signalled."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def wait_groups_empty(pgids: Iterable[int], deadline: float) -> list[int]:
    """Poll until every group is empty or ``deadline`` (trio clock) passes; returns the groups still alive."""
    pending = list(pgids)
    while pending:
        pending = [g for g in pending if await SCANNER.members(g)]
        if not pending or trio.current_time() >= deadline:
            break
        await trio.sleep(POLL_SECONDS)
    return pending


async def terminate_groups(pgids: Sequence[int], kill_at: float) -> None:
    """SIGTERM each group, SIGKILL whatever is left at ``kill_at``, then wait (bounded) for them to vanish."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    left = await wait_groups_empty(pgids, kill_at)
    for pgid in left:
        signal_group(pgid, signal.SIGKILL)
    if left:
        await wait_groups_empty(left, trio.current_time() + AFTER_KILL_SECONDS)


class ProcessGroup:
    """A child started in its own session: its pid is the pgid of everything it forks.

    The leader is watched through a pidfd and reaped only by ``reap``, so until then its zombie keeps the
    pgid from being recycled and signalling the group can never hit a stranger.
    """

    def __init__(self, process: Child, argv: list[str]) -> None:
        self.process = process
        self.argv = argv
        self.pgid = process.pid
        self.start_ticks = start_ticks(process.pid) or 0
        self._pidfd = _open_pidfd(process.pid)
        self.term_sent_at: float | None = None
        self.reaped = False
        self._kill_at = math.inf  # when the grace period after SIGTERM ends
        self._wait_scope: trio.CancelScope | None = None

    @classmethod
    async def spawn(cls, spec: ProcessSpec) -> ProcessGroup:
        """Start ``spec.argv`` with its pipes in a new session; OSError when it cannot be started."""
        child = await spawn_child(spec.argv, cwd=spec.cwd, env=_environment(spec), merge_stderr=spec.merge_stderr)
        return cls(child, spec.shown)

    async def record(self, db: Database, action_id: str, started_at: datetime) -> None:
        """Remember the group in the database, so that a restart after a crash can reap it."""
        record = ProcessGroupRecord(
            pgid=self.pgid,
            action_id=action_id,
            argv=self.argv,
            started_at=started_at.isoformat(),
            boot_id=boot_id(),
            start_ticks=self.start_ticks,
        )
        await process_groups.record_group(db, record)

    async def forget(self, db: Database, action_id: str) -> None:
        """The group is gone: drop its record (a failure is only logged: a restart re-checks the record)."""
        try:
            await process_groups.forget_group(db, self.pgid, action_id)
        except Exception as e:
            log.warning("cannot forget process group %s: %s", self.pgid, e)

    async def wait_leader_exit(self) -> None:
        """Return once the leader has exited (without reaping it)."""
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            return
        while True:  # no pidfd (old kernel, seccomp): poll, without reaping
            if _has_exited(self.pgid):
                return
            await trio.sleep(POLL_SECONDS)

    def terminate(self) -> None:
        """SIGTERM the group (once); the caller decides when to ``kill``."""
        if self.term_sent_at is None:
            self.term_sent_at = trio.current_time()
            signal_group(self.pgid, signal.SIGTERM)

    def kill(self) -> None:
        signal_group(self.pgid, signal.SIGKILL)

    async def empty_group(self, grace: float) -> None:
        """After the leader exited: SIGTERM what is left of the group, SIGKILL it at the grace period's end."""
        if not await SCANNER.members(self.pgid):
            return
        kill_at = (self.term_sent_at if self.term_sent_at is not None else trio.current_time()) + grace
        self.terminate()
        await terminate_groups([self.pgid], kill_at)

    async def reap(self) -> int:
        """Collect the leader's exit status (negative: killed by that signal) and release the pidfd."""
        await self.wait_leader_exit()
        code = self.process.collect()  # the leader has exited: this does not block
        self.reaped = True
        self.close()
        return code

    def close(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def aclose(self) -> None:
        """Whatever happened before: the group is killed if still unreaped, the leader reaped, pipes closed."""
        if not self.reaped:
            self.kill()
            await self.reap()
        await self.process.aclose_pipes()

    async def supervise(
        self,
        publish: Publish,
        *,
        chunk_bytes: int,
        grace: float,
        cancel: trio.Event,
        unblock: Callable[[], None] = lambda: None,
    ) -> tuple[int, bool]:
        """Pump stdout and stderr to ``publish`` until the leader exits (SIGTERM once ``cancel`` is set, SIGKILL
        ``grace`` later), empty the group, reap the leader; the pipes then get ``grace`` to drain. If the pumps
        are still not done then (a slow reader holds ``publish`` back), ``unblock`` is called (publishing must
        then never wait) and they get ``grace`` more, so what is left in the pipes is not cut off for everyone.

        Returns the exit status (negative: the signal that killed it) and whether ``cancel`` was set before the
        leader exited (a cancel that comes later found the process already gone).

        The calling task alone waits until the process does anything (writes, or exits), so a process waiting
        on its stdin (an idle call or exec socket) costs no pump task; from then on each pipe's pump has a task
        of its own beside the wait for the leader."""
        grow_pipe(self.process.stdout, chunk_bytes)
        grow_pipe(self.process.stderr, chunk_bytes)
        outputs = [pipe.fileno() for pipe in (self.process.stdout, self.process.stderr) if pipe is not None]
        with _LeaderOrOutput(self.pgid, self._pidfd, outputs) as first_sign:
            await self._wait_for(first_sign.wait, cancel, grace)
        pumps_done = _Pumps()
        async with trio.open_nursery() as pumps:
            pumps_done.start(pumps, self.process.stdout, "stdout", publish, chunk_bytes)
            if self.process.stderr is not None:
                pumps_done.start(pumps, self.process.stderr, "stderr", publish, chunk_bytes)
            await self._wait_for(self.wait_leader_exit, cancel, grace)
            cancelled = cancel.is_set()
            await self.empty_group(grace)
            code = await self.reap()
            with trio.move_on_after(grace):
                await pumps_done.all_done.wait()
            if not pumps_done.all_done.is_set():
                unblock()
                pumps.cancel_scope.deadline = trio.current_time() + grace  # pipes held by an escaped process
        return code, cancelled

    async def _wait_for(self, event: Callable[[], Awaitable[None]], cancel: trio.Event, grace: float) -> None:
        """Wait for ``event``; once ``cancel`` is set (``interrupt`` wakes us), SIGTERM the group, and SIGKILL it
        ``grace`` later if ``event`` has still not come."""
        while True:
            self._escalate(cancel, grace)
            with trio.CancelScope(deadline=self._kill_at) as scope:
                self._wait_scope = scope
                try:
                    await event()
                    return
                finally:
                    self._wait_scope = None

    def _escalate(self, cancel: trio.Event, grace: float) -> None:
        """SIGTERM the group once ``cancel`` is set; SIGKILL it when the grace period is over."""
        if cancel.is_set() and self.term_sent_at is None:
            self.terminate()
            self._kill_at = trio.current_time() + grace
        elif trio.current_time() >= self._kill_at:
            log.info("grace period over: SIGKILL", extra={"pgid": self.pgid})
            self.kill()
            self._kill_at = math.inf

    def interrupt(self) -> None:
        """The action was cancelled: wake ``_wait_for`` (no task of its own watches for the cancel)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()


class _LeaderOrOutput:
    """The leader's pidfd and the output pipes in one epoll set: one task waits for the first of them (without
    a pidfd the leader is polled every POLL_SECONDS). Nothing is read here."""

    def __init__(self, pid: int, pidfd: int | None, output_fds: list[int]) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._epoll = select.epoll(len(output_fds) + 1)
        for fd in [pidfd, *output_fds]:
            if fd is not None:
                self._epoll.register(fd, select.EPOLLIN)

    def __enter__(self) -> _LeaderOrOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._epoll.close()

    async def wait(self) -> None:
        """Return once an output pipe is readable (output, or its end) or the leader has exited."""
        while not self._epoll.poll(0):
            if self._pidfd is None:
                if _has_exited(self._pid):
                    return
                with trio.move_on_after(POLL_SECONDS):
                    await trio.lowlevel.wait_readable(self._epoll)
            else:
                await trio.lowlevel.wait_readable(self._epoll)


class _Pumps:
    """The pump tasks of one process, and an event set once all of them have ended."""

    def __init__(self) -> None:
        self._running = 0
        self.all_done = trio.Event()

    def start(
        self, nursery: trio.Nursery, stream: trio.abc.ReceiveStream, name: Stream, publish: Publish, size: int
    ) -> None:
        self._running += 1
        nursery.start_soon(self._run, stream, name, publish, size)

    async def _run(self, stream: trio.abc.ReceiveStream, name: Stream, publish: Publish, size: int) -> None:
        try:
            await _pump(stream, name, publish, size)
        finally:
            self._running -= 1
            if not self._running:
                self.all_done.set()


async def _pump(stream: trio.abc.ReceiveStream, name: Stream, publish: Publish, size: int) -> None:
    while data := await stream.receive_some(size):
        await publish(name, bytes(data))


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, leaving it unreaped (WNOWAIT); never blocks (WNOHANG)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def is_ours(record: ProcessGroupRecord, current_boot: str) -> bool:
    """Whether a recorded group still names the processes we started, never a recycled pgid.

    Same boot; and the leader alive with the recorded start time, or (leader gone) every member started
    no earlier than it did. A pid is never reused while a process group of that id has members.
    """
    if not record.boot_id or record.boot_id != current_boot:
        return False
    leader_ticks = start_ticks(record.pgid)
    if leader_ticks is not None:
        return leader_ticks == record.start_ticks
    members = group_members(record.pgid)
    return bool(members) and all((start_ticks(pid) or 0) >= record.start_ticks for pid in members)


async def reap_orphans(records: Sequence[ProcessGroupRecord], grace: float) -> list[int]:
    """Terminate the groups a previous run left behind (those still ours); returns the pgids signalled."""
    current = boot_id()
    ours = [r.pgid for r in records if await trio.to_thread.run_sync(is_ours, r, current)]
    for record in records:
        if record.pgid not in ours:
            log.info("orphan record skipped: not ours any more", extra={"pgid": record.pgid})
    if ours:
        log.warning("reaping orphaned process groups", extra={"pgids": ours})
        await terminate_groups(ours, trio.current_time() + grace)
    return ours


def _environment(spec: ProcessSpec) -> dict[str, str] | None:
    """None (inherit as is), Hearth's environment plus ``env``, or ``env`` alone."""
    if not spec.inherit_env:
        return dict(spec.env or {})
    return None if spec.env is None else {**os.environ, **spec.env}


DEFAULT_PIPE_BYTES = 64 * 1024


def grow_pipe(pipe: trio.abc.ReceiveStream | None, size: int) -> None:
    """Let the pipe hold ``size`` bytes, so one read can take a whole chunk (Linux pipes hold 64 KiB): fewer,
    larger reads are what makes fast output cheap (docs/streaming.md). Best effort: a refusal (size over
    /proc/sys/fs/pipe-max-size, per-user pipe limits) keeps the default."""
    fileno = getattr(pipe, "fileno", None)
    if fileno is not None and size > DEFAULT_PIPE_BYTES:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fileno(), fcntl.F_SETPIPE_SZ, size)
