"""Action output: the bounded ring for late attachers, the fan-out to readers, and the capped log on disk."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec
import trio

from core.chunk_queue import ChunkQueue

log = logging.getLogger("hearth.actions")

Stream = Literal["stdout", "stderr"]
LOG_BATCH_BYTES = 1024 * 1024


class OutputChunk(msgspec.Struct, frozen=True):
    """Bytes one stream produced; ``offset`` is where ``data[0]`` sits in the action's whole output."""

    stream: Stream
    data: bytes
    offset: int


class OutputGap(msgspec.Struct, frozen=True):
    """This reader missed ``missed_bytes`` bytes here (they fell off the ring, or were dropped for it)."""

    missed_bytes: int


OutputItem = OutputChunk | OutputGap


class OutputRing:
    """The newest ``capacity`` bytes of output, as the chunks they arrived in."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._chunks: deque[OutputChunk] | None = None  # made at the first chunk: silent actions are common
        self._size = 0
        self.end_offset = 0

    @property
    def start_offset(self) -> int:
        """Offset of the oldest byte still held (``end_offset`` when empty)."""
        return self._chunks[0].offset if self._chunks else self.end_offset

    @property
    def size(self) -> int:
        return self._size

    def append(self, chunk: OutputChunk) -> None:
        """Keep ``chunk``, dropping the oldest whole chunks (or the head of an oversized one) past capacity."""
        self.end_offset = chunk.offset + len(chunk.data)
        if len(chunk.data) > self._capacity:
            chunk = OutputChunk(chunk.stream, chunk.data[-self._capacity :], self.end_offset - self._capacity)
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(chunk)
        self._size += len(chunk.data)
        while self._size > self._capacity:
            self._size -= len(self._chunks.popleft().data)

    def chunks(self) -> list[OutputChunk]:
        """The chunks held, oldest first (a reader replaying from offset 0 sees a gap for what fell off)."""
        return list(self._chunks) if self._chunks else []


class _Reader:
    """One attached reader: a bounded queue, and the end offset of the last chunk offered to it."""

    __slots__ = ("gone", "is_log", "lossless", "offered_end", "queue")

    def __init__(self, capacity: int, lossless: bool, offered_end: int, is_log: bool) -> None:
        self.queue = ChunkQueue[OutputChunk](capacity)
        self.lossless = lossless
        self.offered_end = offered_end
        self.gone = False
        self.is_log = is_log  # the disk log: only a cancel makes it lossy

    def offer(self, chunk: OutputChunk) -> bool:
        """Deliver without waiting; False when a lossless reader is full and the sender must wait.

        A chunk that is not delivered is simply missing: the reader turns the hole in offsets into a gap. A chunk
        the sender still waits to deliver is not offered yet (``offered``): the reader must not see it as a gap."""
        try:
            self.queue.send_nowait(chunk)
        except trio.WouldBlock:
            if self.lossless:
                return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
        self.offered(chunk)
        return True

    def offered(self, chunk: OutputChunk) -> None:
        self.offered_end = chunk.offset + len(chunk.data)


class OutputReader:
    """What ``Action.open_output`` yields: an async iterator of chunks and gaps, plus ``receive_nowait``.

    Gaps are computed from offsets: a chunk that starts after the next expected byte is preceded by an
    ``OutputGap``; when nothing is queued but bytes were offered and dropped, the gap comes at once."""

    def __init__(self, replay: list[OutputChunk], reader: _Reader | None, expected: int) -> None:
        replay.reverse()
        self._replay = replay  # newest first: the next one is popped from the end
        self._reader = reader
        self._live = reader is not None
        self._expected = expected
        self._pending: OutputChunk | None = None

    def __aiter__(self) -> OutputReader:
        return self

    async def __anext__(self) -> OutputItem:
        try:
            item = self.receive_nowait()
        except trio.EndOfChannel:
            await trio.lowlevel.checkpoint()
            raise StopAsyncIteration from None
        except trio.WouldBlock:
            assert self._reader is not None
            try:
                return self._take(await self._reader.queue.receive())
            except trio.EndOfChannel:
                self._live = False
                return await self.__anext__()
        await trio.lowlevel.checkpoint()
        return item

    def receive_nowait(self) -> OutputItem:
        """The next item if one is ready; ``trio.WouldBlock`` if not yet, ``trio.EndOfChannel`` at the end."""
        if self._pending is not None:
            return self._take(self._pending)
        if self._replay:
            return self._take(self._replay.pop())
        if self._live and self._reader is not None:
            try:
                return self._take(self._reader.queue.receive_nowait())
            except trio.WouldBlock:
                if gap := self._dropped():
                    return gap
                raise
            except trio.EndOfChannel:
                self._live = False
        if gap := self._dropped():
            return gap
        raise trio.EndOfChannel

    def _take(self, chunk: OutputChunk) -> OutputItem:
        if chunk.offset > self._expected:
            self._pending = chunk
            gap = OutputGap(chunk.offset - self._expected)
            self._expected = chunk.offset
            return gap
        self._pending = None
        self._expected = chunk.offset + len(chunk.data)
        return chunk

    def _dropped(self) -> OutputGap | None:
        """Bytes offered to this reader that are neither queued nor delivered: they were dropped for it."""
        if self._reader is None or self._reader.offered_end <= self._expected:
            return None
        gap = OutputGap(self._reader.offered_end - self._expected)
        self._expected = self._reader.offered_end
        return gap


class OutputHub:
    """Fans an action's output out to every attached reader, keeping the ring for late attachers.

    One lock orders publishers (stdout and stderr pumps) so that every reader sees increasing offsets.
    A lossless reader whose channel is full makes ``publish`` wait; after ``stop_blocking`` (the action is
    being cancelled) every reader is lossy, so the pumps can always drain.
    """

    def __init__(self, *, ring_bytes: int, queue_chunks: int) -> None:
        self._ring = OutputRing(ring_bytes)
        self._queue_chunks = queue_chunks
        self._readers: list[_Reader] = []
        self._lock = trio.Lock()
        self._blocking: list[tuple[_Reader, trio.CancelScope]] = []
        self._draining = False
        self._closed = trio.Event()
        self._released = trio.Event()  # publishing waits while this is unset (see ``hold``)
        self._released.set()
        self._first_output: Callable[[], Awaitable[None]] | None = None

    @property
    def total_bytes(self) -> int:
        return self._ring.end_offset

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def reader_count(self) -> int:
        return len(self._readers)

    def before_first_output(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` once, just before the first chunk is appended (e.g. attach the disk log then)."""
        self._first_output = hook

    def hold(self) -> None:
        """Publish nothing until the first lossless reader attaches (or the action is cancelled): a face that
        starts an action and then attaches loses no output past the ring. Call before any output."""
        self._released = trio.Event()

    async def publish(self, stream: Stream, data: bytes) -> None:
        """Append ``data`` to the output; waits while held, and while a lossless reader is full."""
        if not data:
            return
        if not self._released.is_set():
            await self._released.wait()
        async with self._lock:
            if self._first_output is not None:
                hook, self._first_output = self._first_output, None
                await hook()
            chunk = OutputChunk(stream, data, self._ring.end_offset)
            self._ring.append(chunk)
            for reader in tuple(self._readers):
                if not reader.offer(chunk):
                    await self._send_blocking(reader, chunk)
                if reader.gone:
                    self._detach(reader)

    async def _send_blocking(self, reader: _Reader, chunk: OutputChunk) -> None:
        """Wait for room; ``stop_blocking`` may cancel the wait, and the chunk is then missing for this reader."""
        with trio.CancelScope() as scope:
            self._blocking.append((reader, scope))
            try:
                await reader.queue.send(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                reader.gone = True
            finally:
                self._blocking.remove((reader, scope))
                reader.offered(chunk)  # delivered, or (cancelled) missing

    def stop_blocking(self, *, spare_log: bool = False) -> None:
        """From now on no reader can hold the publishers back: full readers get gaps instead. ``spare_log``
        (the process has ended and its pipes are being drained): the disk log stays lossless, and readers that
        attach later are lossless as before."""
        self._draining = self._draining or not spare_log
        self._released.set()
        for reader in self._readers:
            reader.lossless = reader.lossless and spare_log and reader.is_log
        for reader, scope in tuple(self._blocking):
            if not (spare_log and reader.is_log):
                scope.cancel()

    def close(self) -> None:
        """No more output: readers end once they have drained what is queued for them."""
        self._closed.set()
        for reader in self._readers:
            reader.queue.close()

    @asynccontextmanager
    async def open_reader(
        self, *, replay: bool = True, lossless: bool = True, releases_hold: bool = True
    ) -> AsyncIterator[OutputReader]:
        """Attach a reader (see ``Action.open_output``); it is detached when the block exits. A lossless reader
        releases a ``hold`` unless ``releases_hold`` is false (the disk log)."""
        end = self._ring.end_offset
        lossless = lossless and not self._draining
        reader = None if self.closed else _Reader(self._queue_chunks, lossless, end, is_log=not releases_hold)
        if reader is not None:
            self._readers.append(reader)
            if reader.lossless and releases_hold:
                self._released.set()
        try:
            yield OutputReader(self._ring.chunks() if replay else [], reader, 0 if replay else end)
        finally:
            if reader is not None:
                reader.queue.abandon()
                self._detach(reader)

    def _detach(self, reader: _Reader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)


class DiskLog:
    """The action's output on disk, capped: the first ``max_bytes`` are kept, then a note says what was cut.

    It is one more lossless reader of the hub, writing in batches on a worker thread, until the cap is
    reached (then it detaches and counts the rest from offsets). A gap it receives (possible only while the
    action is being cancelled) is noted in the file too.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self.written = 0
        self.truncated = 0
        self._seen = 0  # output offset up to which items were received

    async def run(self, hub: OutputHub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write until the hub closes; started once attached, so no output is missed."""
        try:
            file = await trio.open_file(self.path, "wb")
        except OSError as e:
            log.warning("action log disabled: cannot open %s: %s", self.path, e.strerror)
            task_status.started()
            return
        async with file:

            async def write_through(data: bytes) -> None:  # flushed: GET .../log shows output as it comes
                await trio.to_thread.run_sync(_write_and_flush, file.wrapped, data)

            try:
                await self._write(hub, write_through, task_status)
            except OSError as e:
                log.warning("action log stopped: cannot write %s: %s", self.path, e.strerror)

    async def _write(
        self, hub: OutputHub, write: Callable[[bytes], Awaitable[object]], task_status: trio.TaskStatus[None]
    ) -> None:
        async with hub.open_reader(replay=False, lossless=True, releases_hold=False) as reader:
            task_status.started()
            while self.written < self._max_bytes and (batch := await self._next_batch(reader)):
                await write(self._admit(batch))
        await hub.wait_closed()
        self.truncated += hub.total_bytes - self._seen
        if self.truncated:
            await write(
                f"\n[hearth: log truncated at {self._max_bytes} bytes; {self.truncated} more not kept]\n".encode()
            )

    def _admit(self, batch: bytes) -> bytes:
        room = max(0, self._max_bytes - self.written)
        kept = batch[:room]
        self.written += len(kept)
        self.truncated += len(batch) - len(kept)
        return kept

    async def _next_batch(self, reader: OutputReader) -> bytes:
        """Wait for one item, then take whatever else is ready (up to a bound); b"" at the end."""
        try:
            parts = [self._bytes(await reader.__anext__())]
        except StopAsyncIteration:
            return b""
        size = len(parts[0])
        while size < LOG_BATCH_BYTES:
            try:
                parts.append(self._bytes(reader.receive_nowait()))
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            size += len(parts[-1])
        return b"".join(parts)

    def _bytes(self, item: OutputItem) -> bytes:
        if isinstance(item, OutputGap):
            self._seen += item.missed_bytes
            return f"\n[hearth: {item.missed_bytes} bytes missing here]\n".encode()
        self._seen = item.offset + len(item.data)
        return item.data


def _write_and_flush(file: BinaryIO, data: bytes) -> None:
    file.write(data)
    file.flush()


async def iter_log(path: Path, chunk_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The log's bytes as they are now, in chunks (nothing when there is no file)."""
    try:
        file = await trio.open_file(path, "rb")
    except FileNotFoundError:
        return
    async with file:
        while chunk := await file.read(chunk_bytes):
            yield chunk


def prepare_log_dir(path: Path) -> None:
    """Create <data_dir>/actions; logs of a previous run belong to actions nobody can name any more."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in path.glob("*.log"):
        stale.unlink(missing_ok=True)
