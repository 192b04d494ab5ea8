"""The cluster's store writer (callassist.store_feed): events published on the Redis bus by
another node are stored once each, in publish order per call, and heard once by a store
listener, also when the feeding node dies between its commit and its acknowledgement and
another node takes over. Real redis-server, real SQLite and PostgreSQL stores."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_ui.store import Store, open_store
from callassist.config import load_config
from callassist.events import (CallEnded, CallEvent, CallFault, CallStarted, ConversationUpdated, TranscriptUpdate,
                               event_to_dict)
from callassist.redis_bus import EVENTS_STREAM, RedisEventBus
from callassist.store_feed import GROUP, StoreFeed

WAIT = 30.0


def call_events(call_id: str, finals: int) -> list[CallEvent]:
    events: list[CallEvent] = [CallStarted(call_id, caller="1380000", at=1000.0)]
    for n in range(finals):
        events.append(TranscriptUpdate(call_id, "customer" if n % 2 else "agent", n, f"第{n}句话", n, n + 0.8,
                                       final=True, at=1000.0 + n))
        if n % 5 == 0:
            events.append(ConversationUpdated(call_id, {"talk": {"agent": n}}, at=1000.0 + n))   # transient
    events.append(CallFault(call_id, "RTP 中断 2 秒", at=1100.0))
    events.append(CallEnded(call_id, 99.0, at=1101.0))
    return events


def interleaved(*calls: list[CallEvent]) -> list[CallEvent]:
    out: list[CallEvent] = []
    for index in range(max(map(len, calls))):
        out.extend(call[index] for call in calls if index < len(call))
    return out


def stored_only(events: Sequence[CallEvent]) -> list[CallEvent]:
    return [event for event in events if not isinstance(event, ConversationUpdated)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    env = {"CALLASSIST_STORAGE_DATA_DIR": str(tmp_path / "data")}
    if request.param == "postgresql":
        env["CALLASSIST_STORAGE_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    opened = open_store(load_config(env=env))
    assert opened.engine == request.param
    yield opened
    opened.close()


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[RedisEventBus]:
    bus = RedisEventBus(redis_url, "worker-1")
    await bus.start()
    yield bus
    await bus.close(timeout=1.0)


@contextlib.asynccontextmanager
async def feeding(redis_url: str, store: Any, node_id: str, **options: Any) -> AsyncIterator[StoreFeed]:
    bus = RedisEventBus(redis_url, node_id)
    await bus.start()
    feed = StoreFeed(bus, store, node_id, **options)
    task = asyncio.create_task(feed.run())
    try:
        yield feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close(timeout=1.0)


async def heard(listener: asyncio.Queue[tuple[int, dict[str, Any]]], count: int) -> list[tuple[int, dict[str, Any]]]:
    return [await asyncio.wait_for(listener.get(), WAIT) for _ in range(count)]


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), WAIT)


def stored_by_call(store: Store) -> dict[str, list[dict[str, Any]]]:
    by_call: dict[str, list[dict[str, Any]]] = {}
    for _seq, data in store.events.events_since(0):
        by_call.setdefault(data["call_id"], []).append(data)
    return by_call


async def pending(redis_url: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        return (await redis.xpending(EVENTS_STREAM, GROUP))["pending"]
    finally:
        await redis.aclose()


async def test_published_events_are_stored_once_in_publish_order(
        redis_url: str, store: Store, publisher: RedisEventBus) -> None:
    calls = [call_events("c1", 30), call_events("c2", 25), call_events("c3", 12)]
    events = interleaved(*calls)
    listener = store.events.listen()
    async with feeding(redis_url, store, "web-1", batch=16) as feed:
        for event in events:
            publisher.publish(event)
        expected = stored_only(events)
        got = await heard(listener, len(expected))
        await until(lambda: feed.stored + feed.skipped == len(events))
        assert await pending(redis_url) == 0                                  # transient ones acked too
    assert [data for _seq, data in got] == [event_to_dict(e) for e in expected]   # each heard once, in order
    assert listener.empty()
    assert stored_by_call(store) == {call[0].call_id: [event_to_dict(e) for e in stored_only(call)]
                                     for call in calls}
    assert feed.skipped == len(events) - len(expected) > 0                    # control: transients were there


class DiesAfterCommit:
    """The real store; the node running the feed dies right after its first commit (before
    the acknowledgement): its feed never comes back from that write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.events = store.events
        self.committed = asyncio.Event()

    async def off_loop(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await self.store.off_loop(method, *args, **kwargs)
        self.committed.set()
        await asyncio.Event().wait()


async def test_a_writer_dying_between_commit_and_ack_loses_nothing_and_stores_nothing_twice(
        redis_url: str, store: Store, publisher: RedisEventBus) -> None:
    first = interleaved(call_events("c1", 20), call_events("c2", 20))
    for event in first:
        publisher.publish(event)
    assert await publisher.flush(WAIT)
    listener = store.events.listen()
    dying = DiesAfterCommit(store)
    async with feeding(redis_url, dying, "web-a", batch=10, lease_ttl=1.0) as feed_a:
        await asyncio.wait_for(dying.committed.wait(), WAIT)
        stored_by_a = len(store.events.events_since(0))
        assert 0 < stored_by_a < len(stored_only(first))
        assert await pending(redis_url) > 0                                   # its batch is not acked
    assert feed_a.stored == 0                                                 # it never came back
    second = call_events("c3", 10)
    async with feeding(redis_url, store, "web-b", batch=10, lease_ttl=1.0) as feed_b:
        for event in second:
            publisher.publish(event)
        everything = first + second
        got = await heard(listener, len(stored_only(everything)))
        await until(lambda: feed_b.stored + feed_b.skipped == len(everything))
        assert await pending(redis_url) == 0
    # b recorded a's committed batch again (control: the replay happened) and the store kept one copy
    assert feed_b.stored == len(stored_only(everything))
    assert listener.empty() and len({seq for seq, _ in got}) == len(got)
    assert stored_by_call(store) == {
        call_id: [event_to_dict(e) for e in stored_only(everything) if e.call_id == call_id]
        for call_id in ("c1", "c2", "c3")}
