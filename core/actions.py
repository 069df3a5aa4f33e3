"""Action streams: one long-running thing (a process group or a coroutine) with stdin, output and one result."""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
import trio

from core.config import ActionSettings, Settings
from core.errors import ActionManagerStopped, ActionNotFound, TooManyActions
from core.metrics import Metrics
from core.output import DiskLog, OutputChunk, OutputGap, OutputHub, OutputReader, Stream, prepare_log_dir
from core.processes import ProcessGroup, ProcessSpec, reap_orphans, start_error
from storage import process_groups
from storage.database import Database

__all__ = ["Action", "ActionContext", "ActionInfo", "ActionManager", "ActionResult", "OutputChunk", "OutputGap"]

log = logging.getLogger("hearth.actions")

STDIN_QUEUE_CHUNKS = 16  # a coroutine action's stdin: chunks queued before send_stdin waits
PRUNE_EVERY_SECONDS = 60.0
Kind = Literal["process", "coroutine"]


class ActionResult(msgspec.Struct, frozen=True):
    """How an action ended. ``signal`` is set when a signal killed the process; ``error`` says what went wrong
    (could not start, exception, or why it was cancelled); ``cancelled`` when cancel came before the end."""

    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None and not self.cancelled

    @property
    def outcome(self) -> Literal["ok", "failed", "cancelled"]:
        """The label of ``hearth_actions_total``."""
        return "ok" if self.ok else "cancelled" if self.cancelled else "failed"


class ActionInfo(msgspec.Struct):
    """What an action is and how far it got; ``output_bytes`` counts stdout and stderr together."""

    id: str
    kind: Kind
    name: str
    argv: list[str]
    owner: str
    state: Literal["running", "finished"]
    started_at: datetime
    ended_at: datetime | None
    result: ActionResult | None
    output_bytes: int


class Action:
    """One action. Faces attach with ``open_output``, feed ``send_stdin``, and ``await wait_result()``."""

    kind: ClassVar[Kind]

    def __init__(self, *, name: str, argv: Sequence[str], owner: str, settings: ActionSettings, log_dir: Path) -> None:
        self.id = secrets.token_hex(8)
        self.name = name
        self.argv = list(argv)
        self.owner = owner
        self._settings = settings
        self._hub = OutputHub(ring_bytes=settings.ring_bytes, queue_chunks=settings.reader_queue_chunks)
        self.log_path = log_dir / f"{self.id}.log"
        self._log = DiskLog(self.log_path, settings.log_max_bytes)
        self._started_at = datetime.now(UTC)
        self._ended_at: datetime | None = None
        self.ended_clock: float | None = None  # trio.current_time() at the end, for retention
        self._result: ActionResult | None = None
        self._done = trio.Event()
        self._cancel_reason: str | None = None
        self._cancel_requested = trio.Event()

    @property
    def result(self) -> ActionResult | None:
        return self._result

    def hold_output(self) -> None:
        """Before start: take no output until the first lossless reader attaches (``OutputHub.hold``)."""
        self._hub.hold()

    def info(self) -> ActionInfo:
        return ActionInfo(
            id=self.id,
            kind=self.kind,
            name=self.name,
            argv=list(self.argv),
            owner=self.owner,
            state="running" if self._result is None else "finished",
            started_at=self._started_at,
            ended_at=self._ended_at,
            result=self._result,
            output_bytes=self._hub.total_bytes,
        )

    def open_output(self, *, replay: bool = True, lossless: bool = True) -> AbstractAsyncContextManager[OutputReader]:
        """Attach a reader of chunks and gaps.

        ``replay``: start with what the ring still holds (an ``OutputGap`` first when older output fell off).
        ``lossless``: a full reader makes the pumps wait (so the process waits on its pipe); otherwise chunks are
        dropped for this reader and it later sees one ``OutputGap`` counting them. Iteration ends after the
        last chunk, once the process has ended and its pipes are drained.
        """
        return self._hub.open_reader(replay=replay, lossless=lossless)

    async def wait_result(self) -> ActionResult:
        await self._done.wait()
        assert self._result is not None
        return self._result

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the action to end: SIGTERM to its group (SIGKILL after the grace period), or cancel the coroutine."""
        if self._done.is_set() or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        self._hub.stop_blocking()
        self._cancel_requested.set()
        self._on_cancel()

    def _on_cancel(self) -> None:
        """Subclass hook, called once by ``cancel``."""

    async def send_stdin(self, data: bytes) -> None:
        raise NotImplementedError

    async def close_stdin(self) -> None:
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The whole life of the action, shielded: it ends by ``cancel`` only, always with exactly one result."""
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            result = await self._run_logged(ready)
        except Exception as e:
            log.exception("action failed inside hearth", extra={"action": self.id})
            result = ActionResult(error=f"internal error: {e}")
        ready()
        self._finish(result)

    async def _run_logged(self, ready: Callable[[], None]) -> ActionResult:
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.shield = True  # (before any checkpoint) the action's own scope: no second one

            async def start_log() -> None:
                await nursery.start(self._log.run, self._hub)

            self._hub.before_first_output(start_log)  # an action that prints nothing costs no file and no task
            try:
                return await self._body(ready)
            finally:
                self._hub.close()

    async def _body(self, ready: Callable[[], None]) -> ActionResult:
        raise NotImplementedError

    def _finish(self, result: ActionResult) -> None:
        assert self._result is None, "an action has exactly one result"
        self._result = result
        self._ended_at = datetime.now(UTC)
        self.ended_clock = trio.current_time()
        self._done.set()
        log.info("action finished", extra={"action": self.id, "outcome": result.outcome, "result": result})


class ProcessAction(Action):
    """An action running a program in its own session; cancel empties the whole process group."""

    kind = "process"

    def __init__(
        self, spec: ProcessSpec, db: Database, *, name: str, owner: str, settings: ActionSettings, log_dir: Path
    ) -> None:
        super().__init__(name=name, argv=spec.shown, owner=owner, settings=settings, log_dir=log_dir)
        self._spec = spec
        self._db = db
        self._group: ProcessGroup | None = None
        self._stdin_lock = trio.Lock()
        self._stdin_closed = False

    def _on_cancel(self) -> None:
        if self._group is not None:
            self._group.interrupt()  # SIGTERM now; a cancel before the group exists is seen when it starts

    async def send_stdin(self, data: bytes) -> None:
        """Write to the process's stdin, waiting for pipe capacity; ClosedResourceError after close or end,
        BrokenResourceError when the process closed its end."""
        stdin = self._group.process.stdin if self._group is not None else None
        if self._stdin_closed or stdin is None:
            raise trio.ClosedResourceError("stdin is closed")
        async with self._stdin_lock:
            await stdin.send_all(data)

    async def close_stdin(self) -> None:
        self._stdin_closed = True
        if self._group is not None and self._group.process.stdin is not None:
            await self._group.process.stdin.aclose()

    async def _body(self, ready: Callable[[], None]) -> ActionResult:
        try:
            group = await ProcessGroup.spawn(self._spec)
        except OSError as e:
            self._stdin_closed = True
            ready()
            return ActionResult(error=start_error(self.argv[0], e))
        self._group = group
        try:
            await group.record(self._db, self.id, self._started_at)
            ready()
            code, cancelled = await self._supervise(group)
        finally:
            self._stdin_closed = True
            await group.aclose()
            await group.forget(self._db, self.id)
        reason = self._cancel_reason if cancelled else None
        if code < 0:
            return ActionResult(signal=-code, error=reason, cancelled=cancelled)
        return ActionResult(exit_code=code, error=reason, cancelled=cancelled)

    async def _supervise(self, group: ProcessGroup) -> tuple[int, bool]:
        if self._spec.timeout is None:  # no timer task (nor its nursery) for an action without a time limit
            return await self._supervise_group(group)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cancel_after, self._spec.timeout)
            outcome = await self._supervise_group(group)
            nursery.cancel_scope.cancel()
        return outcome

    async def _supervise_group(self, group: ProcessGroup) -> tuple[int, bool]:
        return await group.supervise(
            self._hub.publish,
            chunk_bytes=self._settings.read_chunk_bytes,
            grace=self._settings.kill_grace_seconds,
            cancel=self._cancel_requested,
            unblock=lambda: self._hub.stop_blocking(spare_log=True),
        )

    async def _cancel_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.cancel(f"timed out after {seconds:g} s")


class ActionContext:
    """What a coroutine action gets: write output, read stdin."""

    def __init__(self, action_id: str, hub: OutputHub, stdin: trio.MemoryReceiveChannel[bytes], chunk: int) -> None:
        self.action_id = action_id
        self._hub = hub
        self._stdin = stdin
        self._chunk = chunk

    async def write(self, data: bytes, stream: Stream = "stdout") -> None:
        """Append output (split into read_chunk_bytes pieces); waits while a lossless reader is full."""
        for start in range(0, len(data), self._chunk):
            await self._hub.publish(stream, data[start : start + self._chunk])

    async def read_stdin(self) -> bytes:
        """The next piece of stdin, or b"" once stdin was closed."""
        try:
            return await self._stdin.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""


CoroutineFn = Callable[[ActionContext], Awaitable[int]]


class CoroutineAction(Action):
    """An action that is an in-process coroutine: its return value is the exit code."""

    kind = "coroutine"

    def __init__(
        self, fn: CoroutineFn, *, name: str, argv: Sequence[str], owner: str, settings: ActionSettings, log_dir: Path
    ) -> None:
        super().__init__(name=name, argv=argv, owner=owner, settings=settings, log_dir=log_dir)
        self._fn = fn
        self._stdin_send, self._stdin_receive = trio.open_memory_channel[bytes](STDIN_QUEUE_CHUNKS)
        self._scope = trio.CancelScope()
        self._stdin_closed = False

    def _on_cancel(self) -> None:
        self._scope.cancel()

    async def send_stdin(self, data: bytes) -> None:
        """Queue ``data`` for ``read_stdin``, waiting while the queue is full; ClosedResourceError after close."""
        if self._stdin_closed:
            raise trio.ClosedResourceError("stdin is closed")
        if data:
            await self._stdin_send.send(data)

    async def close_stdin(self) -> None:
        self._stdin_closed = True
        await self._stdin_send.aclose()

    async def _body(self, ready: Callable[[], None]) -> ActionResult:
        ready()
        context = ActionContext(self.id, self._hub, self._stdin_receive, self._settings.read_chunk_bytes)
        try:
            with self._scope:
                code = await self._fn(context)
                return ActionResult(
                    exit_code=code, error=self._cancel_reason, cancelled=self._cancel_reason is not None
                )
        except Exception as e:
            log.warning("coroutine action raised", exc_info=True, extra={"action": self.id})
            return ActionResult(error=f"{type(e).__name__}: {e}", cancelled=self._cancel_reason is not None)
        finally:
            self._stdin_closed = True
            self._stdin_send.close()
            self._stdin_receive.close()
        return ActionResult(error=self._cancel_reason, cancelled=True)


class ActionManager:
    """Owns the nursery every action runs in, the finished actions kept for a while, and crash recovery."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics) -> None:
        self._db = db
        self._settings = settings.actions
        self._metrics = metrics
        self.log_dir = settings.data_path / "actions"
        self._actions: dict[str, Action] = {}
        self._nursery: trio.Nursery | None = None
        self._running = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reap what a crashed run left, then run actions until cancelled; on cancel every action is cancelled."""
        await trio.to_thread.run_sync(prepare_log_dir, self.log_dir)
        await self._reap_orphans()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await self._prune_forever()
            finally:
                self._nursery = None
                for action in self._actions.values():
                    action.cancel("server shutting down")

    async def start_process(
        self,
        argv: Sequence[str],
        *,
        owner: str,
        name: str = "",
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the action's time limit, not this call's
        inherit_env: bool = True,
        hold_output: bool = False,
        merge_stderr: bool = False,
        shown_argv: Sequence[str] | None = None,
    ) -> Action:
        """Start ``argv`` in its own process group. Invalid arguments raise ProcessStartError; a program or cwd
        that cannot be started gives an action already finished with ``result.error`` set. ``shown_argv`` is
        what the action list, the logs and the process-group record show instead of ``argv`` (secrets hidden)."""
        spec = ProcessSpec(
            argv=list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            timeout=timeout,
            inherit_env=inherit_env,
            merge_stderr=merge_stderr,
            shown_argv=None if shown_argv is None else list(shown_argv),
        )
        action = ProcessAction(
            spec, self._db, name=name or argv[0], owner=owner, settings=self._settings, log_dir=self.log_dir
        )
        return await self._start(action, hold_output=hold_output)

    async def start_coroutine(self, fn: CoroutineFn, *, owner: str, name: str, hold_output: bool = False) -> Action:
        """Run ``fn(context)`` as an action; its return value is the exit code, an exception a failure.
        ``hold_output`` (here and in ``start_process``): no output is taken until the first lossless reader
        attaches (or the action is cancelled), so the face that started it loses nothing."""
        action = CoroutineAction(fn, name=name, argv=[], owner=owner, settings=self._settings, log_dir=self.log_dir)
        return await self._start(action, hold_output=hold_output)

    def get(self, action_id: str) -> Action:
        try:
            return self._actions[action_id]
        except KeyError:
            raise ActionNotFound(f"no action {action_id!r}") from None

    def list(self) -> builtins.list[Action]:
        """Running actions and the finished ones still retained, oldest first."""
        return builtins.list(self._actions.values())

    async def _start(self, action: Action, *, hold_output: bool = False) -> Action:
        if self._nursery is None:
            raise ActionManagerStopped("the action manager is not running")
        if self._running >= self._settings.max_running:
            raise TooManyActions(f"{self._running} actions are running, the most allowed (actions.max_running)")
        if hold_output:
            action.hold_output()
        self._actions[action.id] = action
        await self._nursery.start(self._run, action)
        log.info("action started", extra={"action": action.id, "owner": action.owner, "argv": action.argv})
        return action

    async def _run(self, action: Action, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._metrics.actions_running.inc()
        self._running += 1
        try:
            await action.run(task_status=task_status)
        finally:
            self._running -= 1
            self._metrics.actions_running.dec()
            outcome = action.result.outcome if action.result is not None else "failed"
            self._metrics.actions_total.labels(outcome=outcome).inc()
            self.prune()

    def prune(self) -> None:
        """Forget finished actions past ``retain_finished`` (oldest first) or older than ``retain_seconds``."""
        finished = sorted(
            (a for a in self._actions.values() if a.ended_clock is not None), key=lambda a: a.ended_clock or 0.0
        )
        excess = len(finished) - self._settings.retain_finished
        expired_before = trio.current_time() - self._settings.retain_seconds
        for index, action in enumerate(finished):
            if index < excess or (action.ended_clock or 0.0) < expired_before:
                del self._actions[action.id]
                action.log_path.unlink(missing_ok=True)

    async def _prune_forever(self) -> None:
        while True:
            await trio.sleep(min(PRUNE_EVERY_SECONDS, self._settings.retain_seconds))
            self.prune()

    async def _reap_orphans(self) -> None:
        records = await process_groups.list_groups(self._db)
        if records:
            await reap_orphans(records, self._settings.kill_grace_seconds)
            await process_groups.clear_groups(self._db)
