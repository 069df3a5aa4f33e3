"""Input and output of one call: stdin queued for the process, output lines framed for the socket."""

from __future__ import annotations

import contextlib
from collections import deque

import trio

from core.actions import Action, OutputChunk, OutputGap
from core.call_service import RunningCall
from core.protocols import calls as proto
from core.protocols.websocket_frames import LineSplitter, encode_text_lines
from handlers.hot_socket import Buffer

MAX_LINE_BYTES = 64 * 1024


class CallFramer:
    """stdout and stderr merged in arrival order, one TEXT frame a line, lines cut at 64 KiB."""

    def __init__(self, call: RunningCall) -> None:
        self._split = LineSplitter(max_line=MAX_LINE_BYTES)
        self._call = call
        self.missed = 0

    def encode(self, item: OutputChunk | OutputGap) -> list[Buffer]:
        if isinstance(item, OutputGap):
            self.missed += item.missed_bytes
            return self.finish()
        self._call.bytes_out += len(item.data)
        lines = self._split.feed(item.data)
        return [encode_text_lines(lines)] if lines else []

    def finish(self) -> list[Buffer]:
        lines = self._split.flush()
        return [encode_text_lines(lines)] if lines else []


class StdinFeeder:
    """Client input on its way to the process, queued up to ``limit`` bytes in a task of its own, so that the
    reader keeps reading control frames (cancel, close) while the process is slow to read its stdin. Past the
    limit the reader waits (the client is slowed down by TCP); input after close is ignored."""

    def __init__(self, action: Action, limit: int, stall_seconds: float) -> None:
        self._action = action
        self._limit = limit
        self._stall_seconds = stall_seconds
        self._queue: deque[bytes | None] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = trio.Event()
        self._room = trio.Event()

    async def put(self, data: bytes) -> None:
        """Queue ``data``; when the queue stays full for ``stall_seconds`` (the process is not reading),
        the call is cancelled rather than leaving cancel and close unread behind the input."""
        with trio.move_on_after(self._stall_seconds) as stall:
            while self._bytes and self._bytes + len(data) > self._limit and not self._closed:
                self._room = trio.Event()
                await self._room.wait()
        if stall.cancelled_caught:
            self.close()
            self._action.cancel(proto.MSG_CANCELLED)
        if not self._closed:
            self._queue.append(data)
            self._bytes += len(data)
            self._ready.set()

    def close(self) -> None:
        """Close stdin once what is queued is written."""
        if not self._closed:
            self._closed = True
            self._queue.append(None)
            self._ready.set()
            self._room.set()

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._ready = trio.Event()
                await self._ready.wait()
            item = self._queue.popleft()
            if item is None:
                await close_stdin(self._action)
                return
            self._bytes -= len(item)
            self._room.set()
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._action.send_stdin(item)


async def close_stdin(action: Action) -> None:
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        await action.close_stdin()
