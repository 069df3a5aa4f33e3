"""Action output: the ring, the fan-out hub (lossless and lossy readers), the capped disk log."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from core.output import DiskLog, OutputChunk, OutputGap, OutputHub, OutputItem, OutputReader, OutputRing


def chunk(data: bytes, offset: int) -> OutputChunk:
    return OutputChunk("stdout", data, offset)


def drain_ready(reader: OutputReader) -> list[OutputItem]:
    items: list[OutputItem] = []
    while True:
        try:
            items.append(reader.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


def test_ring_keeps_newest_whole_chunks() -> None:
    ring = OutputRing(10)
    for i, data in enumerate([b"aaaa", b"bbbb", b"cccc"]):
        ring.append(chunk(data, 4 * i))
    assert ring.size == 8
    assert ring.start_offset == 4
    assert ring.chunks() == [chunk(b"bbbb", 4), chunk(b"cccc", 8)]


def test_ring_trims_an_oversized_chunk_to_its_tail() -> None:
    ring = OutputRing(4)
    ring.append(chunk(b"0123456789", 0))
    assert ring.chunks() == [chunk(b"6789", 6)]
    assert ring.start_offset == 6
    assert ring.end_offset == 10


def test_ring_without_loss_starts_at_zero() -> None:
    ring = OutputRing(100)
    ring.append(chunk(b"abc", 0))
    assert ring.chunks() == [chunk(b"abc", 0)]
    assert ring.start_offset == 0


async def test_hub_fans_out_same_chunks_to_every_reader() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=8)
    async with hub.open_reader() as first, hub.open_reader() as second:
        await hub.publish("stdout", b"one")
        await hub.publish("stderr", b"two")
        hub.close()
        got_first = [item async for item in first]
        got_second = [item async for item in second]
    expected = [OutputChunk("stdout", b"one", 0), OutputChunk("stderr", b"two", 3)]
    assert got_first == expected
    assert got_second == expected


async def test_hub_ignores_empty_publish() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=8)
    await hub.publish("stdout", b"")
    assert hub.total_bytes == 0


async def test_lossless_reader_that_never_reads_blocks_the_publisher() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=2)
    published = 0

    async def publisher() -> None:
        nonlocal published
        for _ in range(10):
            await hub.publish("stdout", b"x" * 100)
            published += 1

    async with hub.open_reader(replay=False), trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert published == 2  # two queued, the third waits in send: memory stays bounded
        assert hub.total_bytes == 300
        nursery.cancel_scope.cancel()


async def test_stop_blocking_turns_a_stuck_reader_lossy_with_a_gap() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=1)
    async with hub.open_reader(replay=False) as reader, trio.open_nursery() as nursery:

        async def publisher() -> None:
            for _ in range(4):
                await hub.publish("stdout", b"y" * 10)
            hub.close()

        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        hub.stop_blocking()
        await trio.testing.wait_all_tasks_blocked()
        items = [item async for item in reader]
    assert items == [chunk(b"y" * 10, 0), OutputGap(30)]


async def test_lossy_reader_gets_one_counted_gap_then_continues() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=2)
    async with hub.open_reader(replay=False, lossless=False) as reader:
        for i in range(5):
            await hub.publish("stdout", bytes([65 + i]) * 10)
        first = drain_ready(reader)
        await hub.publish("stdout", b"F" * 10)
        hub.close()
        rest = [item async for item in reader]
    assert first == [chunk(b"A" * 10, 0), chunk(b"B" * 10, 10), OutputGap(30)]
    assert rest == [chunk(b"F" * 10, 50)]


async def test_lossy_reader_gap_is_delivered_before_later_chunks() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=2)
    async with hub.open_reader(replay=False, lossless=False) as reader:
        for i in range(3):
            await hub.publish("stdout", bytes([65 + i]))
        assert reader.receive_nowait() == chunk(b"A", 0)
        await hub.publish("stdout", b"D")
        hub.close()
        items = [item async for item in reader]
    assert items == [chunk(b"B", 1), OutputGap(1), chunk(b"D", 3)]


async def test_late_attacher_replays_ring_with_gap_then_live_output() -> None:
    hub = OutputHub(ring_bytes=8, queue_chunks=8)
    for i in range(4):
        await hub.publish("stdout", bytes([48 + i]) * 4)
    async with hub.open_reader() as reader:
        await hub.publish("stderr", b"live")
        hub.close()
        items = [item async for item in reader]
    assert items == [OutputGap(8), chunk(b"2222", 8), chunk(b"3333", 12), OutputChunk("stderr", b"live", 16)]


async def test_attach_after_close_replays_and_ends() -> None:
    hub = OutputHub(ring_bytes=64, queue_chunks=8)
    await hub.publish("stdout", b"done")
    hub.close()
    async with hub.open_reader() as reader:
        assert [item async for item in reader] == [chunk(b"done", 0)]
    async with hub.open_reader(replay=False) as reader:
        assert [item async for item in reader] == []
        with pytest.raises(trio.EndOfChannel):
            reader.receive_nowait()


async def test_reader_leaving_unblocks_the_publisher() -> None:
    hub = OutputHub(ring_bytes=1024, queue_chunks=1)
    async with trio.open_nursery() as nursery, hub.open_reader(replay=False):

        async def publisher() -> None:
            for _ in range(3):
                await hub.publish("stdout", b"z")

        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.total_bytes == 2
    assert hub.total_bytes == 3
    assert hub.reader_count == 0


async def test_concurrent_publishers_keep_offsets_contiguous() -> None:
    hub = OutputHub(ring_bytes=1 << 20, queue_chunks=2)
    async with hub.open_reader(replay=False) as reader, trio.open_nursery() as nursery:

        async def publisher(stream: str, byte: bytes) -> None:
            for _ in range(50):
                await hub.publish("stdout" if stream == "stdout" else "stderr", byte * 3)

        nursery.start_soon(publisher, "stdout", b"o")
        nursery.start_soon(publisher, "stderr", b"e")
        offsets = []
        async for item in reader:
            assert isinstance(item, OutputChunk)
            offsets.append(item.offset)
            if len(offsets) == 100:
                break
    assert offsets == [3 * i for i in range(100)]


async def test_disk_log_writes_all_output(tmp_path: Path) -> None:
    hub = OutputHub(ring_bytes=16, queue_chunks=2)
    disk = DiskLog(tmp_path / "a.log", 1 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(disk.run, hub)
        for i in range(100):
            await hub.publish("stdout", b"%d\n" % i)
        hub.close()
    assert (tmp_path / "a.log").read_bytes() == b"".join(b"%d\n" % i for i in range(100))


async def test_disk_log_keeps_the_head_and_notes_truncation(tmp_path: Path) -> None:
    hub = OutputHub(ring_bytes=16, queue_chunks=2)
    disk = DiskLog(tmp_path / "a.log", 10)
    async with trio.open_nursery() as nursery:
        await nursery.start(disk.run, hub)
        await hub.publish("stdout", b"0123456")
        await hub.publish("stdout", b"789abcdef")
        hub.close()
    content = (tmp_path / "a.log").read_bytes()
    assert content == b"0123456789\n[hearth: log truncated at 10 bytes; 6 more not kept]\n"


async def test_disk_log_in_a_missing_directory_is_skipped(tmp_path: Path) -> None:
    hub = OutputHub(ring_bytes=16, queue_chunks=1)
    disk = DiskLog(tmp_path / "missing" / "a.log", 1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(disk.run, hub)
        await hub.publish("stdout", b"abcd")
        hub.close()
    assert hub.reader_count == 0
    assert not (tmp_path / "missing").exists()


async def test_disk_log_detaches_once_full_and_counts_the_rest(tmp_path: Path) -> None:
    hub = OutputHub(ring_bytes=16, queue_chunks=2)
    disk = DiskLog(tmp_path / "a.log", 4)
    async with trio.open_nursery() as nursery:
        await nursery.start(disk.run, hub)
        await hub.publish("stdout", b"abcdef")
        for _ in range(500):  # the write runs on a worker thread
            if hub.reader_count == 0:
                break
            await trio.sleep(0.01)
        assert hub.reader_count == 0  # no more wake-ups per chunk once the cap is reached
        for _ in range(10):
            await hub.publish("stdout", b"x" * 100)
        hub.close()
    assert (tmp_path / "a.log").read_bytes() == b"abcd\n[hearth: log truncated at 4 bytes; 1002 more not kept]\n"
