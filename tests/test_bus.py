"""The bus: non-blocking publish, bounded buffers, KEEP_LATEST / DROP_WITH_GAP / DISCONNECT, drop metrics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from core.bus import DISCONNECT, DROP_WITH_GAP, KEEP_LATEST, Bus, BusGap, Subscription
from core.errors import SubscriberTooSlow
from core.metrics import Metrics


def ready(subscription: Subscription) -> list[object]:
    out: list[object] = []
    while True:
        try:
            out.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return out


def dropped(metrics: Metrics, label: str) -> float:
    return metrics.registry.get_sample_value("hearth_bus_dropped_total", {"topic": label}) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def bus(metrics: Metrics) -> Bus:
    bus = Bus(metrics, default_buffer=4)
    bus.declare("metrics.", KEEP_LATEST, buffer=1)
    bus.declare("logs.", DROP_WITH_GAP, buffer=3)
    bus.declare("status.", DISCONNECT, buffer=2)
    return bus


def test_rule_is_the_longest_declared_prefix(bus: Bus) -> None:
    bus.declare("metrics.gpu.", DISCONNECT, buffer=9)
    assert bus.rule_for("metrics.cpu").policy is KEEP_LATEST
    assert bus.rule_for("metrics.gpu.0").buffer == 9
    assert bus.rule_for("other").policy is DROP_WITH_GAP
    assert bus.rule_for("other").buffer == 4
    with pytest.raises(ValueError, match="at least 1"):
        bus.declare("x.", KEEP_LATEST, buffer=0)


def test_publish_without_subscribers_is_a_no_op(bus: Bus) -> None:
    bus.publish("logs.a", "nobody listens")
    assert bus.subscriber_count("logs.a") == 0


async def test_every_subscriber_gets_every_message_in_order(bus: Bus) -> None:
    async with bus.subscribe("logs.a") as first, bus.subscribe("logs.a") as second, bus.subscribe("logs.b") as other:
        bus.publish("logs.a", 1)
        bus.publish("logs.a", 2)
        assert [await first.receive(), await first.receive()] == [1, 2]
        assert ready(second) == [1, 2]
        assert ready(other) == []
    assert bus.subscriber_count("logs.a") == 0


async def test_receive_waits_for_a_publish(bus: Bus) -> None:
    got: list[object] = []
    async with bus.subscribe("logs.a") as subscription, trio.open_nursery() as nursery:

        async def consume() -> None:
            async for message in subscription:
                got.append(message)
                if len(got) == 2:
                    return

        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("logs.a", "x")
        bus.publish("logs.a", "y")
    assert got == ["x", "y"]


async def test_keep_latest_coalesces_to_the_newest(bus: Bus, metrics: Metrics) -> None:
    async with bus.subscribe("metrics.server1") as subscription:
        for value in range(100):
            bus.publish("metrics.server1", value)
        assert ready(subscription) == [99]
    assert dropped(metrics, "metrics.") == 99


async def test_drop_with_gap_counts_what_was_dropped(bus: Bus, metrics: Metrics) -> None:
    async with bus.subscribe("logs.x") as subscription:
        for line in range(10):
            bus.publish("logs.x", line)
        assert ready(subscription) == [0, 1, 2, BusGap(7)]
        bus.publish("logs.x", 10)
        assert ready(subscription) == [10]
    assert dropped(metrics, "logs.") == 7


async def test_drop_with_gap_notice_precedes_later_messages(bus: Bus) -> None:
    async with bus.subscribe("logs.x") as subscription:
        for line in range(5):
            bus.publish("logs.x", line)
        assert subscription.receive_nowait() == 0
        bus.publish("logs.x", 5)
        assert ready(subscription) == [1, 2, BusGap(2), 5]


async def test_disconnect_cuts_off_a_subscriber_that_falls_behind(bus: Bus, metrics: Metrics) -> None:
    async with bus.subscribe("status.ws1") as slow, bus.subscribe("status.ws1") as fast:
        bus.publish("status.ws1", "a")
        assert fast.receive_nowait() == "a"
        bus.publish("status.ws1", "b")
        assert fast.receive_nowait() == "b"
        bus.publish("status.ws1", "c")  # slow now holds a, b and cannot take c
        assert slow.overflowed
        with pytest.raises(SubscriberTooSlow, match=r"status\.ws1"):
            await slow.receive()
        assert bus.subscriber_count("status.ws1") == 1
        assert ready(fast) == ["c"]
    assert dropped(metrics, "status.") == 3


async def test_disconnect_wakes_a_waiting_subscriber(bus: Bus) -> None:
    async with bus.subscribe("status.ws2") as subscription:
        bus.publish("status.ws2", 1)
        bus.publish("status.ws2", 2)
        bus.publish("status.ws2", 3)
        with pytest.raises(SubscriberTooSlow):
            async for _ in subscription:
                pass


async def test_memory_stays_bounded_with_a_subscriber_that_never_reads(bus: Bus) -> None:
    async with bus.subscribe("other") as subscription:
        for i in range(10_000):
            bus.publish("other", i)
        assert ready(subscription) == [0, 1, 2, 3, BusGap(9996)]


async def test_fan_out_to_many_subscribers(bus: Bus) -> None:
    async with trio.open_nursery() as nursery:
        counts = [0] * 200

        async def subscriber(index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with bus.subscribe("logs.fan") as subscription:
                task_status.started()
                async for message in subscription:
                    counts[index] += 1
                    if message == "last":
                        return

        for index in range(200):
            await nursery.start(subscriber, index)
        assert bus.subscriber_count("logs.fan") == 200
        bus.publish("logs.fan", "first")
        bus.publish("logs.fan", "last")
    assert counts == [2] * 200
    assert bus.subscriber_count("logs.fan") == 0
