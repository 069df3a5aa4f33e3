"""One hot websocket after its handshake: a reader, an output pump and one writer that batches frames.

DESIGN.md conventions 2 and 10: the reader decodes client frames (wsproto) and feeds the action's stdin; the
pump turns output chunks into hand-built frames; the writer drains a bounded channel and writes everything
ready in one ``send_all``. Whichever side ends first ends the others, within ``CLOSE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
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

log = logging.getLogger("hearth.hot")

OUTBOX_ITEMS = 16  # each item is the frames of one output chunk (about 64 KiB): the memory bound per socket
MAX_BATCH_BYTES = 1024 * 1024  # the most one send_all writes
RECEIVE_BYTES = 64 * 1024
CLOSE_TIMEOUT_SECONDS = 5.0  # after a close frame: how long the peer gets to answer, and the writer to flush


@dataclass(frozen=True)
class Close:
    """A close frame in the outbox: nothing the outbox holds after it is written."""

    data: bytes


Buffer = bytes | memoryview
Outgoing = list[Buffer] | Close
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


class HotSocket:
    """An accepted websocket streaming one action; ``run`` returns when the connection is over."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, *, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message = max_message_bytes
        self._message_bytes = 0
        self._outbox, self._outbox_receive = trio.open_memory_channel[Outgoing](OUTBOX_ITEMS)
        self._pump_scope = trio.CancelScope()
        self._reader_scope = trio.CancelScope()
        self._going_away = False
        self._close_written = False
        self.output_done = False

    def going_away(self) -> None:
        """The server is stopping: end the stream with close code 1001."""
        self._going_away = True
        self._pump_scope.cancel()

    async def run(self, action: Action, framer: Framer, *, stdin: Action | None) -> None:
        """Stream ``action`` with ``framer``; client messages go to ``stdin`` when given (else are dropped)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, nursery.cancel_scope)
            nursery.start_soon(self._read_loop, stdin, self._outbox.clone(), nursery.cancel_scope)
            nursery.start_soon(self._pump, action, framer, self._outbox.clone())
            self._outbox.close()

    # -- the pump: output -> frames -------------------------------------------------------------------

    async def _pump(self, action: Action, framer: Framer, outbox: trio.MemorySendChannel[Outgoing]) -> None:
        async with outbox:
            code, reason = await self._pump_output(action, framer, outbox)
            if self._pump_scope.cancelled_caught and not self._going_away:
                return  # the reader ended first and closed
            await self._queue_close(outbox, code, reason)
        self._reader_scope.deadline = min(self._reader_scope.deadline, trio.current_time() + CLOSE_TIMEOUT_SECONDS)

    async def _pump_output(
        self, action: Action, framer: Framer, outbox: trio.MemorySendChannel[Outgoing]
    ) -> tuple[int, str]:
        try:
            with self._pump_scope:
                await self._copy_output(action, framer, outbox)
                result = await action.wait_result()
                self.output_done = True
                return CLOSE_NORMAL, result_reason(result, framer.missed)
        except Exception:
            log.exception("hot websocket output failed", extra={"action": action.id})
            return CLOSE_INTERNAL_ERROR, "internal error"
        return CLOSE_GOING_AWAY, "server shutting down"

    async def _copy_output(self, action: Action, framer: Framer, outbox: trio.MemorySendChannel[Outgoing]) -> None:
        async with action.open_output(replay=True, lossless=True) as reader:
            async for item in reader:
                if frames := _encode_ready(framer, item, reader):
                    await outbox.send(frames)
        if tail := framer.finish():
            await outbox.send(tail)

    async def _queue_close(self, outbox: trio.MemorySendChannel[Outgoing], code: int, reason: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            await outbox.send(Close(self._ws.send(CloseConnection(code=code, reason=reason))))

    # -- the reader: client frames -> stdin, pongs, close ---------------------------------------------

    async def _read_loop(
        self, stdin: Action | None, outbox: trio.MemorySendChannel[Outgoing], everything: trio.CancelScope
    ) -> None:
        async with outbox:
            with self._reader_scope:
                try:
                    await self._read_frames(stdin, outbox)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception:
                    log.exception("hot websocket reader failed")
                    await self._queue_close(outbox, CLOSE_INTERNAL_ERROR, "internal error")
        self._pump_scope.cancel()
        everything.deadline = min(everything.deadline, trio.current_time() + CLOSE_TIMEOUT_SECONDS)

    async def _read_frames(self, stdin: Action | None, outbox: trio.MemorySendChannel[Outgoing]) -> None:
        while True:
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if await self._on_event(event, stdin, outbox):
                    return

    async def _on_event(self, event: Event, stdin: Action | None, outbox: trio.MemorySendChannel[Outgoing]) -> bool:
        """Handle one client event; True when reading is over."""
        if isinstance(event, TextMessage | BytesMessage):
            return await self._on_message(event, stdin, outbox)
        if isinstance(event, Ping) and self._ws.state is ConnectionState.OPEN:
            await outbox.send([self._ws.send(event.response())])
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await outbox.send(Close(self._ws.send(event.response())))
            else:  # a frame wsproto could not parse (state OPEN), or the answer to our close (CLOSED)
                await self._queue_close(outbox, event.code, event.reason or "")
            return True
        return False

    async def _on_message(
        self, event: TextMessage | BytesMessage, stdin: Action | None, outbox: trio.MemorySendChannel[Outgoing]
    ) -> bool:
        data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
        self._message_bytes += len(data)
        if self._message_bytes > self._max_message:
            await self._queue_close(outbox, CLOSE_TOO_BIG, f"message larger than {self._max_message} bytes")
            return True
        if event.message_finished:
            self._message_bytes = 0
        if stdin is not None:
            await _feed_stdin(stdin, data, close=isinstance(event, BytesMessage) and not data)
        return False

    # -- the writer: outbox -> socket, batched ---------------------------------------------------------

    async def _write_loop(self, everything: trio.CancelScope) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                if batch:
                    await send_buffers(self._stream.socket, batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            everything.cancel()

    async def _next_batch(self) -> list[Buffer] | None:
        """Everything ready in the outbox (waiting for the first item); None once every sender is done."""
        try:
            batch = self._admit(await self._outbox_receive.receive())
        except trio.EndOfChannel:
            return None
        size = _size(batch)
        while size < MAX_BATCH_BYTES:
            try:
                more = self._admit(self._outbox_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.extend(more)
            size += _size(more)
        return batch

    def _admit(self, item: Outgoing) -> list[Buffer]:
        """The buffers to write for ``item``: nothing may follow a close frame on the wire."""
        if self._close_written:
            return []
        if isinstance(item, Close):
            self._close_written = True
            return [item.data]
        return item


async def send_buffers(sock: trio.socket.SocketType, buffers: list[Buffer]) -> None:
    """Write every buffer, in order, with vectored ``sendmsg`` calls: frames are never joined into a copy."""
    views = [memoryview(b) for b in buffers]
    start = 0
    while start < len(views):
        try:
            sent = await sock.sendmsg(views[start : start + IOV_MAX])
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


async def _feed_stdin(action: Action, data: bytes, *, close: bool) -> None:
    """Client data to the process; an empty binary message closes stdin. A closed stdin drops the data."""
    try:
        if close:
            await action.close_stdin()
        elif data:
            await action.send_stdin(data)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
