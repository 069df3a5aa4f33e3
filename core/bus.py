"""In-process topics: non-blocking publish, a bounded buffer per subscriber, a slow-subscriber policy per prefix."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

import msgspec
import trio

from core.errors import SubscriberTooSlow
from core.metrics import Metrics

DEFAULT_BUFFER = 256


class Policy(StrEnum):
    """What happens when a subscriber's buffer is full and another message arrives."""

    KEEP_LATEST = "keep_latest"  # the oldest queued message is dropped: the subscriber sees the latest (metrics)
    DROP_WITH_GAP = "drop_with_gap"  # the new message is dropped; the subscriber later gets one BusGap (logs)
    DISCONNECT = "disconnect"  # the subscriber is cut off: its iteration raises SubscriberTooSlow


KEEP_LATEST = Policy.KEEP_LATEST
DROP_WITH_GAP = Policy.DROP_WITH_GAP
DISCONNECT = Policy.DISCONNECT


class BusGap(msgspec.Struct, frozen=True):
    """Delivered in place of ``missed`` messages that were dropped for this subscriber (DROP_WITH_GAP)."""

    missed: int


@dataclass(frozen=True)
class TopicRule:
    """The policy of every topic starting with ``prefix`` ("" matches all); ``buffer`` messages per subscriber."""

    prefix: str
    policy: Policy
    buffer: int

    @property
    def label(self) -> str:
        """The ``topic`` label of ``hearth_bus_dropped``: the declared prefix, so cardinality stays bounded."""
        return self.prefix or "default"


class Subscription:
    """One subscriber of one topic: an async iterator of messages (and ``BusGap`` notices)."""

    def __init__(self, topic: str, rule: TopicRule) -> None:
        self.topic = topic
        self.rule = rule
        self._queue: deque[object] = deque()
        self._missed = 0
        self._overflowed = False
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    def deliver(self, message: object) -> int:
        """Queue ``message`` without waiting; returns how many messages were dropped to keep the bound."""
        if self._overflowed:
            return 1
        if len(self._queue) < self.rule.buffer:
            if self._missed:
                self._queue.append(BusGap(self._missed))  # a notice may exceed the buffer by one
                self._missed = 0
            self._queue.append(message)
            self._lot.unpark()
            return 0
        return self._overflow(message)

    def _overflow(self, message: object) -> int:
        if self.rule.policy is Policy.KEEP_LATEST:
            self._queue.popleft()
            self._queue.append(message)
            return 1
        if self.rule.policy is Policy.DROP_WITH_GAP:
            self._missed += 1
            return 1
        dropped = len(self._queue) + 1
        self._queue.clear()
        self._overflowed = True
        self._lot.unpark_all()
        return dropped

    def receive_nowait(self) -> object:
        """The next message or gap; ``trio.WouldBlock`` when none is ready, SubscriberTooSlow once cut off."""
        if self._overflowed:
            raise SubscriberTooSlow(f"subscriber of {self.topic} fell {self.rule.buffer} messages behind")
        if self._queue:
            return self._queue.popleft()
        if self._missed:
            missed, self._missed = self._missed, 0
            return BusGap(missed)
        raise trio.WouldBlock

    async def receive(self) -> object:
        """Wait for the next message or gap."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                message = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> object:
        return await self.receive()


class Bus:
    """Topics by name; ``declare`` a policy per prefix at start, ``publish`` from anywhere, ``subscribe`` to one."""

    def __init__(self, metrics: Metrics, *, default_buffer: int = DEFAULT_BUFFER) -> None:
        self._metrics = metrics
        self._default = TopicRule("", Policy.DROP_WITH_GAP, default_buffer)
        self._rules: list[TopicRule] = []
        self._subscribers: dict[str, dict[Subscription, None]] = {}

    def declare(self, prefix: str, policy: Policy, *, buffer: int) -> None:
        """Topics starting with ``prefix`` use ``policy`` with ``buffer`` messages per subscriber (longest
        prefix wins; undeclared topics are DROP_WITH_GAP with the default buffer). Applies to new subscribers."""
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self._rules = [r for r in self._rules if r.prefix != prefix] + [TopicRule(prefix, policy, buffer)]
        self._rules.sort(key=lambda r: len(r.prefix), reverse=True)

    def rule_for(self, topic: str) -> TopicRule:
        return next((r for r in self._rules if topic.startswith(r.prefix)), self._default)

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))

    def publish(self, topic: str, message: object) -> None:
        """Hand ``message`` to every subscriber of ``topic``; never waits, never grows a buffer past its bound."""
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return
        dropped = 0
        for subscription in subscribers:
            dropped += subscription.deliver(message)
        if dropped:
            self._count_drops(subscribers, dropped)

    def _count_drops(self, subscribers: dict[Subscription, None], dropped: int) -> None:
        label = next(iter(subscribers)).rule.label
        self._metrics.bus_dropped.labels(topic=label).inc(dropped)
        for subscription in [s for s in subscribers if s.overflowed]:
            del subscribers[subscription]

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """Receive what is published on ``topic`` from now until the block exits."""
        subscription = Subscription(topic, self.rule_for(topic))
        subscribers = self._subscribers.setdefault(topic, {})
        subscribers[subscription] = None
        try:
            yield subscription
        finally:
            subscribers.pop(subscription, None)
            if not subscribers and self._subscribers.get(topic) is subscribers:
                del self._subscribers[topic]
