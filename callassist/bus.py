"""In-process publish/subscribe for call events.

Publishing never blocks the audio path: each subscriber owns a queue. A subscriber
that must not lose events (the store) asks for an unbounded queue; a screen that
can fall behind asks for a bounded one and, when full, its oldest event is dropped
and `dropped` counts it (the screen catches up from the store on reconnect).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from typing import Protocol

from callassist.events import CallEvent


class Subscribers(Protocol):
    """A bus that hands events to its subscriptions (EventBus, redis_bus.RedisEventBus)."""
    _subscriptions: set[Subscription]


class Subscription:
    def __init__(self, bus: Subscribers, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[CallEvent] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: CallEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> CallEvent:
        return await self.queue.get()

    def __aiter__(self) -> AsyncIterator[CallEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[CallEvent]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, maxsize: int = 0) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscriptions.add(sub)
        return sub

    @contextmanager
    def subscription(self, maxsize: int = 0):
        sub = self.subscribe(maxsize)
        try:
            yield sub
        finally:
            sub.close()

    def publish(self, event: CallEvent) -> None:
        for sub in tuple(self._subscriptions):
            sub._offer(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)


class ForwardingBus(EventBus):
    """An in-process bus that also forwards every event it carries (to a message bus that
    other machines read): a worker's own parts (post-call pass, live reader) follow its
    calls in process, and the rest of the cluster sees the same events."""

    def __init__(self, forward: Callable[[CallEvent], None]) -> None:
        super().__init__()
        self._forward = forward

    def publish(self, event: CallEvent) -> None:
        super().publish(event)
        self._forward(event)
