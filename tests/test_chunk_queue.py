"""ChunkQueue: bounded, one receiver, the errors of a trio memory channel."""

from __future__ import annotations

import pytest
import trio

from core.chunk_queue import ChunkQueue


def test_queue_holds_up_to_capacity_then_would_block() -> None:
    queue = ChunkQueue[int](2)
    queue.send_nowait(1)
    queue.send_nowait(2)
    with pytest.raises(trio.WouldBlock):
        queue.send_nowait(3)
    assert [queue.receive_nowait(), queue.receive_nowait()] == [1, 2]
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()
    assert len(queue) == 0


async def test_a_waiting_receiver_gets_items_in_order() -> None:
    queue = ChunkQueue[int](1)
    got: list[int] = []

    async def receive_three() -> None:
        got.extend([await queue.receive() for _ in range(3)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_three)
        await trio.testing.wait_all_tasks_blocked()
        queue.send_nowait(1)  # handed over to the waiting receiver
        queue.send_nowait(2)  # queued behind it
        await queue.send(3)  # waits for room
    assert got == [1, 2, 3]


async def test_close_ends_the_receiver_after_what_is_queued() -> None:
    queue = ChunkQueue[int](4)
    queue.send_nowait(1)
    queue.close()
    with pytest.raises(trio.ClosedResourceError):
        queue.send_nowait(2)
    assert await queue.receive() == 1
    with pytest.raises(trio.EndOfChannel):
        await queue.receive()


async def test_close_wakes_a_waiting_receiver_with_end_of_channel() -> None:
    queue = ChunkQueue[int](4)
    async with trio.open_nursery() as nursery:

        async def receive_end() -> None:
            with pytest.raises(trio.EndOfChannel):
                await queue.receive()

        nursery.start_soon(receive_end)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()


async def test_abandon_breaks_senders_waiting_or_not() -> None:
    queue = ChunkQueue[int](1)
    queue.send_nowait(1)
    async with trio.open_nursery() as nursery:

        async def send_broken() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await queue.send(2)

        nursery.start_soon(send_broken)
        await trio.testing.wait_all_tasks_blocked()
        queue.abandon()
    with pytest.raises(trio.BrokenResourceError):
        queue.send_nowait(3)
    assert len(queue) == 0


async def test_a_cancelled_receive_leaves_no_receiver_behind() -> None:
    queue = ChunkQueue[int](2)
    with trio.move_on_after(0.01):
        await queue.receive()
    queue.send_nowait(7)  # queued, not handed to the receiver that left
    assert queue.receive_nowait() == 7


async def test_two_receivers_at_once_are_refused() -> None:
    queue = ChunkQueue[int](2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await queue.receive()
        queue.send_nowait(1)
