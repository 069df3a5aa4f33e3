"""Client input on its way to a process: a bounded queue drained by a task of its own (hot websockets)."""

from __future__ import annotations

import contextlib
from collections import deque

import trio

from core.actions import Action


class StdinFeeder:
    """Client input on its way to the process, queued up to ``limit`` bytes in a task of its own, so that the
    reader keeps reading control frames (cancel, close) while the process is slow to read its stdin. Past the
    limit the reader waits (the client is slowed down by TCP); input after close is ignored."""

    def __init__(self, action: Action, limit: int, stall_seconds: float, stall_reason: str) -> None:
        self._action = action
        self._limit = limit
        self._stall_seconds = stall_seconds
        self._stall_reason = stall_reason
        self._queue: deque[bytes | None] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = trio.Event()
        self._room = trio.Event()

    async def put(self, data: bytes) -> None:
        """Queue ``data``; when the queue stays full for ``stall_seconds`` (the process is not reading),
        the action is cancelled rather than leaving a cancel, a close or the client's end unread behind it."""
        with trio.move_on_after(self._stall_seconds) as stall:
            while self._bytes and self._bytes + len(data) > self._limit and not self._closed:
                self._room = trio.Event()
                await self._room.wait()
        if stall.cancelled_caught:
            self.close()
            self._action.cancel(self._stall_reason)
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
