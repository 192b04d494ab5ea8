"""The bus across machines (callassist.redis_bus) against a real redis-server: fan-out to
every node in publish order, events kept while Redis is down, consumer groups that deliver
again what was not acknowledged, entries nobody can decode set aside once."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis

from callassist import wire
from callassist.events import CallEvent, CallFault, CallStarted, ConversationUpdated, TranscriptUpdate
from callassist.leases import Lease
from callassist.redis_bus import EVENTS_STREAM, REJECTED_STREAM, Entry, GroupReader, RedisEventBus
from servers import RedisServer, running_redis

WAIT = 20.0         # upper bound for a condition that should hold within milliseconds


def faults(count: int, call_id: str = "c1", start: int = 0) -> list[CallEvent]:
    return [CallFault(call_id, f"problem {n}", at=float(n)) for n in range(start, start + count)]


async def take(queue: asyncio.Queue[CallEvent], count: int) -> list[CallEvent]:
    return [await asyncio.wait_for(queue.get(), WAIT) for _ in range(count)]


async def next_batch(batches: AsyncIterator[list[Entry]]) -> list[Entry]:
    return await asyncio.wait_for(batches.__anext__(), WAIT)


@pytest.fixture
async def buses(redis_url: str) -> AsyncIterator[list[RedisEventBus]]:
    made: list[RedisEventBus] = []
    yield made
    for bus in made:
        await bus.close(timeout=1.0)


async def started(made: list[RedisEventBus], url: str, node_id: str, **options: int) -> RedisEventBus:
    bus = RedisEventBus(url, node_id, **options)
    made.append(bus)
    await bus.start()
    return bus


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, so stopping it disturbs no other test."""
    with running_redis("callassist-redis-own-") as server:
        yield server


async def test_every_node_hears_every_event_in_publish_order(redis_url: str, buses: list[RedisEventBus]) -> None:
    publisher = await started(buses, redis_url, "worker-1")
    listener = await started(buses, redis_url, "web-1")
    remote, own = listener.subscribe(), publisher.subscribe(maxsize=0)
    await listener.ready()
    events = faults(50) + [TranscriptUpdate("c2", "customer", 1, "我要投诉", 0.0, 1.0, True, at=1.0),
                           ConversationUpdated("c2", {"talk": {}}, at=2.0)]   # transient: on the bus too
    for event in events:
        publisher.publish(event)
    assert await take(remote.queue, len(events)) == events
    assert await take(own.queue, len(events)) == events
    assert await publisher.flush(WAIT) and publisher.published == len(events) and publisher.queued == 0


async def test_a_bounded_subscriber_drops_its_oldest(redis_url: str, buses: list[RedisEventBus]) -> None:
    bus = await started(buses, redis_url, "web-1")
    with bus.subscription(maxsize=3) as slow, bus.subscription() as control:
        await bus.ready()
        events = faults(10)
        for event in events:
            bus.publish(event)
        assert await take(control.queue, 10) == events      # all ten went through the reader
        assert slow.dropped == 7 and await take(slow.queue, 3) == events[-3:]
    assert bus.subscriber_count == 0


async def test_events_published_before_start_are_sent_after_it(redis_url: str, buses: list[RedisEventBus]) -> None:
    early = RedisEventBus(redis_url, "ari-1")
    buses.append(early)
    events = faults(5)
    for event in events:
        early.publish(event)
    assert early.queued == 5 and not await early.flush(0.2)      # nothing sends yet
    listener = await started(buses, redis_url, "web-1")
    sub = listener.subscribe()
    await listener.ready()
    await early.start()
    assert await take(sub.queue, 5) == events


async def test_close_sends_what_is_queued(redis_url: str) -> None:
    bus = RedisEventBus(redis_url, "worker-1")
    await bus.start()
    for event in faults(300):
        bus.publish(event)
    await bus.close()
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.xlen(EVENTS_STREAM) == 300
    finally:
        await redis.aclose()
    bus.publish(CallFault("c1", "after close"))                   # never raises
    assert bus.dropped == 1 and bus.queued == 0


async def test_events_are_kept_while_redis_is_down_and_sent_once_in_order(
        own_redis: RedisServer, buses: list[RedisEventBus], caplog: pytest.LogCaptureFixture) -> None:
    url = own_redis.url()
    publisher = await started(buses, url, "worker-1")
    before = faults(3)
    for event in before:
        publisher.publish(event)
    assert await publisher.flush(WAIT)
    own_redis.stop()
    caplog.set_level(logging.WARNING, "callassist.redis_bus")
    during = faults(200, start=3)
    for event in during:
        publisher.publish(event)                                   # never blocks, never raises
    while not any("failing" in r.message for r in caplog.records):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)                                       # several failed retries
    assert publisher.queued == 200 and publisher.dropped == 0
    own_redis.start()                                              # same port, empty (no persistence)
    assert await publisher.flush(WAIT)
    raw = Redis.from_url(url)
    try:
        entries = await raw.xrange(EVENTS_STREAM)
    finally:
        await raw.aclose()
    assert [wire.decode(fields[b"e"]) for _id, fields in entries] == during     # once each, in order
    outage_logs = [r for r in caplog.records if "failing" in r.message]
    assert len(outage_logs) == 1                                   # logged once per outage
    assert any("working again" in r.message for r in caplog.records)


async def test_the_queue_kept_during_an_outage_is_bounded(own_redis: RedisServer, buses: list[RedisEventBus]) -> None:
    publisher = await started(buses, own_redis.url(), "worker-1", max_queued=50)
    own_redis.stop()
    events = faults(80)
    for event in events:
        publisher.publish(event)
    assert publisher.queued == 50 and publisher.dropped == 30
    own_redis.start()
    listener = await started(buses, own_redis.url(), "web-1")
    sub = listener.subscribe()
    await listener.ready()
    assert await publisher.flush(WAIT)
    raw = Redis.from_url(own_redis.url())
    try:
        entries = await raw.xrange(EVENTS_STREAM)
    finally:
        await raw.aclose()
    # the newest 50 were kept (a partial batch may already have gone before the stop)
    assert [wire.decode(fields[b"e"]) for _id, fields in entries][-50:] == events[-50:]
    del sub


async def test_a_retried_batch_is_not_appended_twice(redis_url: str, buses: list[RedisEventBus]) -> None:
    """The sender retries a batch whose reply was lost with the same batch number: the
    append script applies it once."""
    bus = await started(buses, redis_url, "worker-1")
    batch = [wire.encode(event) for event in faults(3)]
    args = [1, bus.maxlen, 60_000, *batch]
    assert await bus._append(keys=[bus.stream, bus._producer_key], args=args) == 3
    assert await bus._append(keys=[bus.stream, bus._producer_key], args=args) == 0     # the retry
    assert await bus._append(keys=[bus.stream, bus._producer_key], args=[2, *args[1:]]) == 3   # control
    assert await bus.redis.xlen(bus.stream) == 6


async def test_a_group_delivers_unacknowledged_entries_again(redis_url: str, buses: list[RedisEventBus]) -> None:
    publisher = await started(buses, redis_url, "worker-1")
    consumer = await started(buses, redis_url, "web-1")
    events = faults(6)
    for event in events:
        publisher.publish(event)
    assert await publisher.flush(WAIT)
    first = consumer.group("store", "web-1", count=4).__aiter__()
    batch = await next_batch(first)
    assert [event for _id, event in batch] == events[:4]
    await consumer.group("store", "web-1").ack([batch[0][0]])          # only the first is handled
    rest = await next_batch(first)
    assert [event for _id, event in rest] == events[4:]
    await first.aclose()                                              # this consumer "restarts"
    again = consumer.group("store", "web-1").__aiter__()
    pending = await next_batch(again)
    assert [event for _id, event in pending] == events[1:]               # own pending first, in order
    await again.aclose()
    # another consumer takes them over once they are idle long enough (claim_idle=0: at once)
    other = consumer.group("store", "web-2", claim_idle=0.0).__aiter__()
    claimed = await next_batch(other)
    assert [event for _id, event in claimed] == events[1:]
    reader = consumer.group("store", "web-2")
    await reader.ack([entry_id for entry_id, _ in claimed])
    later = faults(1, start=6)
    publisher.publish(later[0])
    assert [event for _id, event in await next_batch(other)] == later    # then new entries
    assert (await consumer.redis.xpending(EVENTS_STREAM, "store"))["pending"] == 1
    await other.aclose()


async def test_a_consumer_does_not_claim_entries_of_a_live_one(redis_url: str, buses: list[RedisEventBus]) -> None:
    publisher = await started(buses, redis_url, "worker-1")
    events = faults(3)
    for event in events:
        publisher.publish(event)
    assert await publisher.flush(WAIT)
    alive = publisher.group("postcall", "w1").__aiter__()
    assert len(await next_batch(alive)) == 3
    second = publisher.group("postcall", "w2", claim_idle=60.0).__aiter__()
    publisher.publish(CallStarted("c9", at=1.0))
    got = await next_batch(second)
    assert [event for _id, event in got] == [CallStarted("c9", at=1.0)]    # only the new one
    await alive.aclose()
    await second.aclose()


async def test_an_entry_nobody_can_decode_is_set_aside_once(redis_url: str, buses: list[RedisEventBus],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "callassist.redis_bus")
    web1 = await started(buses, redis_url, "web-1")
    web2 = await started(buses, redis_url, "web-2")
    subs = [web1.subscribe(), web2.subscribe()]
    await web1.ready()
    await web2.ready()
    raw = Redis.from_url(redis_url)
    try:
        bad_id = (await raw.xadd(EVENTS_STREAM, {"e": b'{"v": 7, "type": "CallFault"}'})).decode()
        no_field = (await raw.xadd(EVENTS_STREAM, {"x": b"1"})).decode()
        good = CallFault("c1", "fine", at=1.0)
        await raw.xadd(EVENTS_STREAM, {"e": wire.encode(good)})
        for sub in subs:
            assert await take(sub.queue, 1) == [good]                   # the bad ones skipped
        group: GroupReader = web1.group("store", "web-1")
        batches = group.__aiter__()
        assert [event for _id, event in await next_batch(batches)] == [good]
        await batches.aclose()
        rejected = await raw.xrange(REJECTED_STREAM)
        assert [(f[b"id"].decode(), f[b"error"].decode()) for _i, f in rejected] == [
            (bad_id, "unknown wire version 7 (this node reads version 1: upgrade it, or the sender is newer)"),
            (no_field, "no 'e' field (fields: ['x'])")]
        assert (await raw.xpending(EVENTS_STREAM, "store"))["pending"] == 1     # the bad ones acked
    finally:
        await raw.aclose()
    logged = [r.message for r in caplog.records if "set aside" in r.message]
    assert len(logged) == 2 and bad_id in logged[0] and no_field in logged[1]   # once each, with its id
    assert web1.rejected + web2.rejected == 6          # two entries: two fan-out readers + the group


# --- leases (callassist.leases) --------------------------------------------------------

class CuttableProxy:
    """A TCP relay to Redis that can be cut like a network partition: open connections go
    silent (nothing forwarded either way, nothing closed) and new ones get no answer."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut.is_set():
            await asyncio.Event().wait()          # a partition: no answer at all
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if self.cut.is_set():
                    await asyncio.Event().wait()
                sink.write(data)
                await sink.drain()

        for task in (asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()


class Worker:
    """Lease work that records when it ran: started and stopped (monotonic)."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.running = asyncio.Event()

    async def __call__(self) -> None:
        self.started.append(time.monotonic())
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.append(time.monotonic())
            self.running.clear()


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), WAIT)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_of_two_contenders_one_holds_and_a_released_lease_is_taken_at_once(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        # a long ttl: a takeover within WAIT can only come from the release, not expiry
        a = Lease(redis, "store-writer", "web-a", ttl=60.0, retry_every=0.05)
        b = Lease(redis, "store-writer", "web-b", ttl=60.0, retry_every=0.05)
        a.renew_every = b.renew_every = 0.05                           # renew often: see it hold
        work_a, work_b = Worker(), Worker()
        task_a = asyncio.create_task(a.run(work_a))
        await work_a.running.wait()
        task_b = asyncio.create_task(b.run(work_b))
        await until(lambda: a.renewals >= 10)                          # b tried meanwhile, often
        assert not work_b.started and await a.holder() == "web-a" and a.held and not b.held
        await stop(task_a)                                             # clean stop: released
        assert work_a.stopped and not a.held
        await asyncio.wait_for(work_b.running.wait(), WAIT)
        assert await b.holder() == "web-b" and work_b.started[0] >= work_a.stopped[0]
        await stop(task_b)
        assert await b.holder() is None
    finally:
        await redis.aclose()


async def test_a_holder_cut_off_stops_its_work_before_another_takes_over(redis_server: RedisServer,
                                                                          redis_url: str) -> None:
    proxy = CuttableProxy(redis_server.port)
    database = redis_url.rsplit("/", 1)[1]
    cut_off = Redis.from_url(f"{(await proxy.start()).rsplit('/', 1)[0]}/{database}")
    direct = Redis.from_url(redis_url)
    try:
        ttl = 1.0
        holder = Lease(cut_off, "store-writer", "web-a", ttl=ttl)
        standby = Lease(direct, "store-writer", "web-b", ttl=ttl)
        work_a, work_b = Worker(), Worker()
        task_a = asyncio.create_task(holder.run(work_a))
        await work_a.running.wait()
        task_b = asyncio.create_task(standby.run(work_b))
        await until(lambda: holder.renewals >= 3)
        assert not work_b.started                                      # control for the takeover below
        proxy.cut.set()                                                # renewals and release never arrive
        await asyncio.wait_for(work_b.running.wait(), WAIT)            # within ttl + a retry
        assert holder.lost == 1 and work_a.stopped
        assert work_a.stopped[0] < work_b.started[0]                   # never both at work
        assert await standby.holder() == "web-b"
        await stop(task_b)
        await stop(task_a)
    finally:
        await proxy.close()
        await direct.aclose()
        await cut_off.aclose(close_connection_pool=True)
