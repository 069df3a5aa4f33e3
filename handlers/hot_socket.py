"""One hot websocket after its handshake: a reader and a writer task sharing the socket (conventions 2, 10).

The writer drains the action's output (a bounded channel in core), turns every chunk that is ready into
hand-built frames and writes them with one vectored ``sendmsg``; the reader decodes client frames (wsproto),
feeds the action's stdin and answers pings and close. Whichever ends first ends the other, leaving the
close handshake at most ``CLOSE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import trio
from prometheus_client import Gauge
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

from core.actions import Action, ActionResult, OutputChunk, OutputGap
from core.output import OutputReader
from core.protocols.websocket_frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    LineSplitter,
    binary_frame_parts,
    compact_reason,
    encode_text_lines,
)
from handlers.stdin_feeder import StdinFeeder

log = logging.getLogger("hearth.hot")

MAX_BATCH_BYTES = 1024 * 1024  # the most one send_all writes
RECEIVE_BYTES = 64 * 1024
CLOSE_TIMEOUT_SECONDS = 5.0  # after a close frame: how long the peer gets to answer, and the writer to flush


Buffer = bytes | memoryview
IOV_MAX = 1024  # buffers one sendmsg takes (Linux)


class Framer(Protocol):
    """Turns output items into ready-to-write frames; ``missed`` counts bytes lost in gaps."""

    missed: int

    def encode(self, item: OutputChunk | OutputGap) -> list[Buffer]: ...

    def finish(self) -> list[Buffer]: ...


class LineFramer:
    """framing=lines: one TEXT message per line of each stream (stdout and stderr split separately)."""

    def __init__(self) -> None:
        self._split = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.missed = 0

    def encode(self, item: OutputChunk | OutputGap) -> list[Buffer]:
        if isinstance(item, OutputGap):
            self.missed += item.missed_bytes
            return self.finish()
        lines = self._split[item.stream].feed(item.data)
        return [encode_text_lines(lines)] if lines else []

    def finish(self) -> list[Buffer]:
        lines = [*self._split["stdout"].flush(), *self._split["stderr"].flush()]
        return [encode_text_lines(lines)] if lines else []


class ChunkFramer:
    """framing=chunks: the raw output as BINARY messages of at most 32 KiB."""

    def __init__(self) -> None:
        self.missed = 0

    def encode(self, item: OutputChunk | OutputGap) -> list[Buffer]:
        if isinstance(item, OutputGap):
            self.missed += item.missed_bytes
            return []
        return binary_frame_parts(item.data)

    def finish(self) -> list[Buffer]:
        return []


def result_reason(result: ActionResult, missed: int = 0) -> str:
    """The close reason: the action's result as compact JSON, e.g. ``{"exit_code":0}`` (at most 123 bytes)."""
    fields: dict[str, object] = {}
    if result.exit_code is not None:
        fields["exit_code"] = result.exit_code
    if result.signal is not None:
        fields["signal"] = result.signal
    if result.cancelled:
        fields["cancelled"] = True
    if missed:
        fields["missed_bytes"] = missed
    if result.error is not None:
        fields["error"] = result.error
    return compact_reason(fields)


@dataclass(frozen=True)
class StdinLimits:
    """Client input queued for a process: at most ``buffer_bytes``; full for ``stall_seconds`` cancels the
    action with ``stall_reason``."""

    buffer_bytes: int
    stall_seconds: float
    stall_reason: str


class HotSocket:
    """An accepted websocket streaming one action; ``run`` returns when the connection is over.

    Two tasks share the socket: the writer (output -> frames, a task of its own) and the reader (client
    frames -> stdin, and the pongs and close answers it owes), which is the task that called ``run``.
    Writes take ``_send_lock`` without yielding when it is free, so the hot path pays no task switch for
    it; nothing is written after a close frame. ``ws`` is wsproto's connection after the handshake (the
    handshake's HTTP parser is not kept: an idle socket costs less)."""

    def __init__(
        self, stream: trio.SocketStream, ws: Connection, *, max_message_bytes: int, stdin: StdinLimits
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message = max_message_bytes
        self._stdin_limits = stdin
        self._stdin: StdinFeeder | None = None
        self._stdin_scope: trio.CancelScope | None = None
        self._message_bytes = 0
        self._send_lock = trio.Lock()
        self._writer_scope = trio.CancelScope()
        self._reader_scope = trio.CancelScope()
        self._going_away = False
        self._close_written = False
        self._pending: list[Event] = []  # events read before ``run`` (e.g. behind a first message)
        self._tasks: trio.Nursery | None = None  # the writer's nursery, while ``run`` runs
        self._lossless = True

    def going_away(self) -> None:
        """The server is stopping: end the stream with close code 1001."""
        self._going_away = True
        self._writer_scope.cancel()

    async def run(self, action: Action, framer: Framer, *, stdin: Action | None, lossless: bool = True) -> None:
        """Stream ``action`` with ``framer``; client messages go to ``stdin`` when given (else are dropped).
        ``lossless``: a slow client slows the process down; else it gets gaps (a spectator must not stall it)."""
        self._lossless = lossless
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            nursery.start_soon(self._write_loop, action, framer, nursery.cancel_scope)
            await self._read_loop(stdin, nursery.cancel_scope)
        self._tasks = None

    # -- sending, from either task ---------------------------------------------------------------------

    async def _send(self, buffers: list[Buffer], *, close: bool = False) -> None:
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if not self._close_written:
                self._close_written = close
                await self._send_unlocked(buffers)
        finally:
            self._send_lock.release()

    async def _send_unlocked(self, buffers: list[Buffer]) -> None:
        """A write interrupted half-way (cancelled, or a broken socket) leaves a torn frame on the wire:
        nothing more may follow it, not even a close frame."""
        try:
            await send_buffers(self._stream.socket, buffers)
        except BaseException:
            self._close_written = True
            raise

    async def _send_close(self, code: int, reason: str) -> None:
        """Start (or answer) the close handshake, unless a close frame went out already."""
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._send([self._ws.send(CloseConnection(code=code, reason=reason))], close=True)

    # -- the writer: output -> frames ------------------------------------------------------------------

    async def _write_loop(self, action: Action, framer: Framer, everything: trio.CancelScope) -> None:
        try:
            code, reason = await self._stream_output(action, framer)
            if self._writer_scope.cancelled_caught and not self._going_away:
                return  # the reader ended first and closed
            await self._send_close(code, reason)
            self._reader_scope.deadline = min(self._reader_scope.deadline, trio.current_time() + CLOSE_TIMEOUT_SECONDS)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            everything.cancel()
        finally:
            self._writer_finished()

    def _writer_finished(self) -> None:
        """The writer is done: the stdin feeder beside it ends too (and none starts after)."""
        if self._stdin_scope is None:
            self._stdin_scope = trio.CancelScope()
        self._stdin_scope.cancel()
        if self._stdin is not None:
            self._stdin.close()  # a reader waiting for room in the queue goes on at once

    def _feeder(self, action: Action) -> StdinFeeder | None:
        """The stdin feeder of ``action``, started on first use (an idle socket has no such task) beside the
        writer, so that the reader keeps reading (a cancel, a close, the client's end) while the process is slow
        to read its stdin; None once the writer is done."""
        if self._stdin_scope is None and self._tasks is not None:
            limits = self._stdin_limits
            self._stdin = StdinFeeder(action, limits.buffer_bytes, limits.stall_seconds, limits.stall_reason)
            self._stdin_scope = trio.CancelScope()
            self._tasks.start_soon(_run_feeder, self._stdin, self._stdin_scope)
        return self._stdin

    async def _stream_output(self, action: Action, framer: Framer) -> tuple[int, str]:
        try:
            with self._writer_scope:
                await self._copy_output(action, framer)
                return await self._after_output(action, framer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("hot websocket output failed", extra={"action": action.id})
            return await self._output_failed(action)
        return CLOSE_GOING_AWAY, "server shutting down"

    async def _output_failed(self, action: Action) -> tuple[int, str]:
        """An exception of ours while streaming: the close code and reason to end with."""
        return CLOSE_INTERNAL_ERROR, "internal error"

    async def _after_output(self, action: Action, framer: Framer) -> tuple[int, str]:
        """Output is drained: the close code and reason to end with (here the result rides in the reason)."""
        result = await action.wait_result()
        return CLOSE_NORMAL, result_reason(result, framer.missed)

    async def _copy_output(self, action: Action, framer: Framer) -> None:
        async with action.open_output(replay=True, lossless=self._lossless) as reader:
            async for item in reader:
                if frames := _encode_ready(framer, item, reader):
                    await self._send(frames)
        if tail := framer.finish():
            await self._send(tail)

    # -- the reader: client frames -> stdin, pongs, close ----------------------------------------------

    async def _read_loop(self, stdin: Action | None, everything: trio.CancelScope) -> None:
        with self._reader_scope:
            try:
                await self._read_frames(stdin)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                log.exception("hot websocket reader failed")
                with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
                    await self._send_close(CLOSE_INTERNAL_ERROR, "internal error")
        self._writer_scope.cancel()
        everything.deadline = min(everything.deadline, trio.current_time() + CLOSE_TIMEOUT_SECONDS)

    async def _read_frames(self, stdin: Action | None) -> None:
        pending, self._pending = self._pending, []
        for event in pending:
            if await self._on_event(event, stdin):
                return
        while True:
            data = await self._receive()
            if not data:
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if await self._on_event(event, stdin):
                    return

    async def _receive(self) -> bytes:
        """The next bytes from the client (b"" at its end), read straight from the socket: what trio's
        ``receive_some`` does, with three coroutines fewer held by every idle socket."""
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._stream.socket
        while True:
            try:
                data = os.read(sock.fileno(), RECEIVE_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(f"socket receive failed: {e}") from e
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _on_event(self, event: Event, stdin: Action | None) -> bool:
        """Handle one client event; True when reading is over."""
        if isinstance(event, TextMessage | BytesMessage):
            return await self._on_message(event, stdin)
        if isinstance(event, Ping) and self._ws.state is ConnectionState.OPEN:
            await self._send([self._ws.send(event.response())])
        elif isinstance(event, CloseConnection):
            # the client's close (answered), a frame wsproto could not parse (state OPEN: closed with its
            # code), or the answer to our own close (CLOSED: nothing left to send)
            await self._send_close(event.code, event.reason or "")
            return True
        return False

    async def _on_message(self, event: TextMessage | BytesMessage, stdin: Action | None) -> bool:
        data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
        self._message_bytes += len(data)
        if self._message_bytes > self._max_message:
            await self._send_close(CLOSE_TOO_BIG, f"message larger than {self._max_message} bytes")
            return True
        if event.message_finished:
            self._message_bytes = 0
        if stdin is not None and (feeder := self._feeder(stdin)) is not None:
            if isinstance(event, BytesMessage) and not data:
                feeder.close()  # an empty binary message closes stdin
            elif data:
                await feeder.put(data)
        return False


class OpenSockets:
    """The hot sockets of one route set, counted in ``hearth_websockets_open{face}``; ``going_away`` tells
    every one of them that the server is stopping."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._sockets: set[HotSocket] = set()

    def going_away(self) -> None:
        for sock in tuple(self._sockets):
            sock.going_away()

    @contextlib.contextmanager
    def tracking(self, sock: HotSocket) -> Iterator[None]:
        self._sockets.add(sock)
        self._gauge.inc()
        try:
            yield
        finally:
            self._gauge.dec()
            self._sockets.discard(sock)


async def send_buffers(sock: trio.socket.SocketType, buffers: list[Buffer]) -> None:
    """Write every buffer, in order, with vectored writes: frames are never joined into a copy.

    The write is tried at once and waits for the socket only when it is full; it does not yield otherwise
    (the writer yields on every output chunk it waits for, so no other task starves)."""
    views = [memoryview(b) for b in buffers]
    start = 0
    fd = sock.fileno()
    while start < len(views):
        try:
            sent = os.writev(fd, views[start : start + IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as e:
            raise trio.BrokenResourceError(f"socket send failed: {e}") from e
        start = _advance(views, start, sent)


def _advance(views: list[memoryview], start: int, sent: int) -> int:
    """Drop ``sent`` bytes from the front of ``views[start:]``; the index of the first unsent view."""
    while start < len(views) and sent >= views[start].nbytes:
        sent -= views[start].nbytes
        start += 1
    if sent:
        views[start] = views[start][sent:]
    return start


def _size(buffers: list[Buffer]) -> int:
    return sum(len(b) for b in buffers)


def _encode_ready(framer: Framer, first: OutputChunk | OutputGap, reader: OutputReader) -> list[Buffer]:
    """The frames of ``first`` and of every item already waiting behind it (up to MAX_BATCH_BYTES)."""
    parts = framer.encode(first)
    size = _size(parts)
    while size < MAX_BATCH_BYTES:
        try:
            more = framer.encode(reader.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        parts.extend(more)
        size += _size(more)
    return parts


async def _run_feeder(feeder: StdinFeeder, scope: trio.CancelScope) -> None:
    with scope:
        await feeder.run()
