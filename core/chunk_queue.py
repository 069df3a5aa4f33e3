"""A bounded queue with one consumer: what an output reader receives through, lighter than a memory channel.

An idle websocket holds one output reader per action it streams, so its queue is paid for by every idle call:
a trio memory channel costs about 1.7 KB (a 760-byte deque, two task sets, two parking lots) before anything
is queued. This queue holds a deque only while items wait in it and parks at most one receiver, with the
errors a memory channel raises, so callers read the same.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class ChunkQueue(Generic[T]):
    """Up to ``capacity`` items from any number of senders to one receiver.

    ``send_nowait`` raises ``trio.WouldBlock`` when full, ``trio.ClosedResourceError`` after ``close`` and
    ``trio.BrokenResourceError`` after ``abandon``; ``receive`` raises ``trio.EndOfChannel`` once closed
    and drained."""

    __slots__ = ("_abandoned", "_capacity", "_closed", "_items", "_receiver", "_room")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[T] | None = None
        self._closed = False  # the sending side is done: the receiver ends after the last item
        self._abandoned = False  # the receiver is gone: sending fails
        self._receiver: trio.lowlevel.Task | None = None
        self._room: trio.Event | None = None  # set when an item leaves the queue, for senders waiting on a full one

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def send_nowait(self, item: T) -> None:
        if self._abandoned:
            raise trio.BrokenResourceError("the receiver is gone")
        if self._closed:
            raise trio.ClosedResourceError("the queue is closed")
        if self._receiver is not None:  # it waits, so nothing is queued: hand the item over
            trio.lowlevel.reschedule(self._receiver, outcome.Value(item))
            self._receiver = None
            return
        if len(self) >= self._capacity:
            raise trio.WouldBlock
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    async def send(self, item: T) -> None:
        """``send_nowait``, waiting for room while the queue is full."""
        while True:
            try:
                self.send_nowait(item)
                return
            except trio.WouldBlock:
                if self._room is None:
                    self._room = trio.Event()
                await self._room.wait()

    def close(self) -> None:
        """No more items: the receiver gets the queued ones, then ``trio.EndOfChannel``."""
        self._closed = True
        if self._receiver is not None:
            trio.lowlevel.reschedule(self._receiver, outcome.Error(trio.EndOfChannel()))
            self._receiver = None
        self._wake_senders()

    def abandon(self) -> None:
        """The receiver leaves: queued items are dropped, senders (waiting or not) get BrokenResourceError."""
        self._abandoned = True
        self._items = None
        self._wake_senders()

    def receive_nowait(self) -> T:
        if self._items:
            item = self._items.popleft()
            if not self._items:
                self._items = None  # an idle reader holds no deque
            self._wake_senders()
            return item
        if self._abandoned:
            raise trio.ClosedResourceError("the receiver left")
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        """The next item, waiting for one; ``trio.EndOfChannel`` once closed and drained."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        if self._receiver is not None:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiver = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._receiver = None
            return trio.lowlevel.Abort.SUCCEEDED

        handed: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return handed

    def _wake_senders(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None
