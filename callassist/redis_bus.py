"""The event bus across machines: one Redis stream, `callassist:events`, same surface as the
in-process callassist.bus.EventBus.

- `publish(event)` never blocks and never raises (it is called from the loop that carries
  RTP and ARI): the event is encoded (callassist.wire) and queued; one sender task XADDs the
  queue in order. While Redis is unreachable the queue is kept (bounded: beyond `max_queued`
  the oldest event is dropped and counted) and retried with backoff; the outage is logged
  once when it starts and once when it ends.
  A batch is appended by a Lua script that also records the batch's number for this bus
  instance, so a batch retried after a lost reply (was it applied or not?) is not appended
  twice: a retry never duplicates an event on the stream.
- `subscribe()` / `subscription()`: fan-out, every event any node publishes from now on, read
  by one XREAD task per bus (started by the first subscription, ended with the last one).
- `group(group, consumer)`: a consumer group reader (the store writer, the post-call pass):
  batches of (stream id, event), `ack(ids)` after the work is done; unacknowledged entries are
  delivered again (this consumer's own pending first, then entries a dead consumer left
  pending longer than `claim_idle`).
An entry no node can decode is logged once (with its stream id) and copied to
`callassist:events:rejected` for an operator; consumers skip it (groups acknowledge it).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from callassist import wire
from callassist.bus import Subscription
from callassist.events import CallEvent

log = logging.getLogger(__name__)

EVENTS_STREAM = "callassist:events"
REJECTED_STREAM = "callassist:events:rejected"
REJECTED_IDS = "callassist:events:rejected:ids"       # ids already set aside (logged once)
PRODUCER_PREFIX = "callassist:producer:"              # last batch number appended per bus instance
FIELD = b"e"
STREAM_MAXLEN = 1_000_000          # approximate (MAXLEN ~): Redis trims whole macro nodes
MAX_QUEUED = 100_000               # events kept while Redis is unreachable
SEND_BATCH = 500                   # events per XADD script call
SEND_TIMEOUT = 5.0                 # a batch not confirmed by then is retried (same batch number)
PRODUCER_TTL_MS = 86_400_000       # batch-number record of a bus instance: long past any retry
RETRY_FIRST = 0.05
RETRY_MAX = 2.0
READ_BLOCK_MS = 1000
READ_COUNT = 500
CLOSE_TIMEOUT = 5.0

Entry = tuple[str, CallEvent]

# KEYS: stream, producer record. ARGV: batch number, maxlen, payload... Appends the payloads
# unless this batch number was appended already; returns the number of entries appended.
_APPEND = """
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local batch = tonumber(ARGV[1])
if batch <= last then return 0 end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return #ARGV - 3
"""

# KEYS: rejected stream, rejected ids. ARGV: stream id, raw entry, error, node, maxlen.
# Returns 1 when this call set the entry aside (the caller logs it), 0 when another did.
_REJECT = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'id', ARGV[1], 'e', ARGV[2], 'error', ARGV[3], 'node', ARGV[4])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def stop_task(task: asyncio.Task) -> None:
    """Cancel a task blocked in a Redis command and wait for its end. redis-py (8.1) can
    swallow a cancellation that lands just as a reply comes in (the task then blocks in its
    next command): cancel until it is done."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


class Backoff:
    """Retry delays doubling from `first` to `most`; `reset()` after a success."""

    def __init__(self, first: float = RETRY_FIRST, most: float = RETRY_MAX) -> None:
        self.first, self.most = first, most
        self.delay = first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)

    def reset(self) -> None:
        self.delay = self.first


class Outage:
    """Logs a failing dependency once when it starts failing and once when it works again."""

    def __init__(self, subject: str, meanwhile: str) -> None:
        self.subject = subject              # e.g. "bus: Redis at redis://..."
        self.meanwhile = meanwhile          # what happens until it works again
        self.since: float | None = None

    def failed(self, exc: BaseException, detail: str = "") -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s failing (%s: %s); %s%s", self.subject, type(exc).__name__, exc, self.meanwhile,
                        detail)

    def ok(self, detail: str = "") -> None:
        if self.since is not None:
            log.warning("%s working again after %.1f s%s", self.subject, time.monotonic() - self.since, detail)
            self.since = None


class RedisEventBus:
    def __init__(self, url: str, node_id: str, *, stream: str = EVENTS_STREAM,
                 max_queued: int = MAX_QUEUED, maxlen: int = STREAM_MAXLEN) -> None:
        self.url = url
        self.node_id = node_id
        self.stream = stream
        self.maxlen = maxlen
        # no socket_timeout: reads block on purpose (XREAD BLOCK); each call has its own timeout
        self.redis: Redis = Redis.from_url(url, socket_connect_timeout=2.0, socket_keepalive=True)
        self._append = self.redis.register_script(_APPEND)
        self._reject_script = self.redis.register_script(_REJECT)
        # this instance's batches are numbered; the number is recorded under a key of its own
        self._producer_key = f"{PRODUCER_PREFIX}{node_id}:{uuid.uuid4().hex}"
        self._batch_number = 0
        self._queued: deque[bytes] = deque(maxlen=max_queued)
        self._max_queued = max_queued
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()              # set while nothing is queued or being sent
        self._idle.set()
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_ready = asyncio.Event()      # the fan-out reader knows where it starts
        self._reader_ready.set()
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self.published = 0                        # events appended to the stream
        self.dropped = 0                          # events lost: queue full or bus closed
        self.rejected = 0                         # entries this bus could not decode

    # --- publishing -------------------------------------------------------------------

    def publish(self, event: CallEvent) -> None:
        try:
            data = wire.encode(event)
        except Exception:
            log.exception("bus: %s of call %s cannot be encoded; not published", type(event).__name__,
                          getattr(event, "call_id", "?"))
            self.dropped += 1
            return
        if self._closed:
            log.error("bus closed: %s of call %s not published", type(event).__name__,
                      getattr(event, "call_id", "?"))
            self.dropped += 1
            return
        if len(self._queued) == self._max_queued:
            self.dropped += 1                     # deque(maxlen) drops the oldest
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("bus: %d events queued for Redis, dropping the oldest (%d dropped so far)",
                          self._max_queued, self.dropped)
        self._queued.append(data)
        self._signal()

    def _signal(self) -> None:
        if self._loop is None:                    # not started: start() wakes the sender
            return
        if threading.get_ident() == self._loop_thread:
            self._idle.clear()
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._signal)

    @property
    def queued(self) -> int:
        """Events published but not yet appended to the stream."""
        return len(self._queued)

    async def _send(self) -> None:
        backoff = Backoff()
        outage = Outage(f"bus: Redis at {self.url}", "keeping events queued")
        while True:
            if not self._queued:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # a reader starting on this node first learns where the stream ends, so it sees
            # every event published after its subscription
            await self._reader_ready.wait()
            batch = [self._queued[i] for i in range(min(SEND_BATCH, len(self._queued)))]
            self._batch_number += 1
            number = self._batch_number
            while True:
                try:
                    await asyncio.wait_for(self._append(
                        keys=[self.stream, self._producer_key],
                        args=[number, self.maxlen, PRODUCER_TTL_MS, *batch]), SEND_TIMEOUT)
                    break
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    outage.failed(exc, f" ({len(self._queued)} queued)")
                    await backoff.wait()
            backoff.reset()
            outage.ok(f", sending {len(self._queued)} queued events")
            # while the batch was in flight the queue may have dropped some of its oldest
            # entries (full): only pop what is still the batch's
            for data in batch:
                if self._queued and self._queued[0] is data:
                    self._queued.popleft()
            self.published += len(batch)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far is on the stream; False on timeout."""
        if self._queued:
            self._idle.clear()                    # published before start(): not sent yet
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._sender = asyncio.create_task(self._send(), name=f"bus-sender-{self.node_id}")
        if self._queued:
            self._signal()
        if self._subscriptions:
            self._ensure_reader()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is queued (for up to `timeout` seconds), then stop."""
        if self._closed:
            return
        self._closed = True
        if self._sender is not None and not await self.flush(timeout):
            self.dropped += len(self._queued)
            log.error("bus: Redis at %s unreachable at close: %d events not published",
                      self.url, len(self._queued))
        for task in (self._sender, self._reader):
            if task is not None:
                await stop_task(task)
        self._sender = self._reader = None
        await self.redis.aclose()

    # --- fan-out ----------------------------------------------------------------------

    def subscribe(self, maxsize: int = 0) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscriptions.add(sub)
        if self._loop is not None:
            self._ensure_reader()
        return sub

    @contextmanager
    def subscription(self, maxsize: int = 0) -> Iterator[Subscription]:
        sub = self.subscribe(maxsize)
        try:
            yield sub
        finally:
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    async def ready(self) -> None:
        """Wait until the fan-out reader follows the stream: from then on a subscriber gets
        every event any node publishes (this node's own are held back until then anyway)."""
        await self._reader_ready.wait()

    def _ensure_reader(self) -> None:
        if self._reader is None and not self._closed:
            self._reader_ready.clear()
            self._reader = asyncio.create_task(self._read(), name=f"bus-reader-{self.node_id}")

    async def _read(self) -> None:
        backoff = Backoff()
        outage = Outage(f"bus: Redis at {self.url}", "subscribers wait")
        last_id: str | None = None
        try:
            while True:
                try:
                    if last_id is None:
                        newest: Any = await asyncio.wait_for(self.redis.xrevrange(self.stream, count=1), SEND_TIMEOUT)
                        last_id = _text(newest[0][0]) if newest else "0-0"
                        self._reader_ready.set()
                    reply: Any = await asyncio.wait_for(
                        self.redis.xread({self.stream: last_id}, count=READ_COUNT, block=READ_BLOCK_MS),
                        READ_BLOCK_MS / 1000 + SEND_TIMEOUT)
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    outage.failed(exc)
                    await backoff.wait()
                    continue
                backoff.reset()
                outage.ok()
                for _stream, entries in reply or ():
                    for raw_id, fields in entries:
                        last_id = _text(raw_id)
                        event = await self._decode(last_id, fields)
                        if event is not None:
                            for sub in tuple(self._subscriptions):
                                sub._offer(event)
                if not self._subscriptions:       # the last subscriber left: stop reading
                    return
        finally:
            self._reader = None
            self._reader_ready.set()

    # --- decoding and rejects ---------------------------------------------------------

    async def _decode(self, entry_id: str, fields: dict[bytes, bytes]) -> CallEvent | None:
        """The entry's event, or None after setting it aside (it is never retried)."""
        data = fields.get(FIELD)
        try:
            if data is None:
                raise wire.WireError(f"no {FIELD.decode()!r} field (fields: {sorted(_text(k) for k in fields)})")
            return wire.decode(data)
        except wire.WireError as exc:
            self.rejected += 1
            await self._reject(entry_id, data or b"", str(exc))
            return None

    async def _reject(self, entry_id: str, data: bytes, error: str) -> None:
        try:
            first = await asyncio.wait_for(self._reject_script(
                keys=[REJECTED_STREAM, REJECTED_IDS], args=[entry_id, data, error, self.node_id, self.maxlen]),
                SEND_TIMEOUT)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.error("bus: entry %s of %s cannot be decoded (%s); not copied to %s: %s",
                      entry_id, self.stream, error, REJECTED_STREAM, exc)
            return
        if first:
            log.error("bus: entry %s of %s cannot be decoded, set aside in %s: %s",
                      entry_id, self.stream, REJECTED_STREAM, error)
        else:
            log.debug("bus: entry %s (already set aside) skipped: %s", entry_id, error)

    # --- consumer groups --------------------------------------------------------------

    def group(self, group: str, consumer: str, *, count: int = READ_COUNT, block_ms: int = READ_BLOCK_MS,
              claim_idle: float = 30.0, claim_every: float | None = None, create_from: str = "0") -> GroupReader:
        """A reader of consumer group `group` as `consumer` (see GroupReader)."""
        return GroupReader(self, group, consumer, count=count, block_ms=block_ms, claim_idle=claim_idle,
                           claim_every=claim_every, create_from=create_from)


class GroupReader:
    """`async for batch in reader:` batches (lists) of (stream id, event) of consumer group
    `group`, read as `consumer`; `await reader.ack(ids)` once they are handled.

    Order of delivery: first this consumer's own pending entries (delivered before a
    restart, never acknowledged), then entries of other consumers idle longer than
    `claim_idle` seconds (XAUTOCLAIM: a consumer that died), then new entries. With
    `claim_every` the claim is repeated that often. The group is created if missing, from
    `create_from` ("0": the whole stream; "$": only what comes next). Redis being down is
    waited out (logged once); an entry that cannot be decoded is set aside and acknowledged.
    """

    def __init__(self, bus: RedisEventBus, group: str, consumer: str, *, count: int, block_ms: int,
                 claim_idle: float, claim_every: float | None, create_from: str) -> None:
        self.bus = bus
        self.group = group
        self.consumer = consumer
        self.count = count
        self.block_ms = block_ms
        self.claim_idle = claim_idle
        self.claim_every = claim_every
        self.create_from = create_from
        self._outage = Outage(f"bus: Redis at {bus.url}", f"group {group!r} waits")

    def __aiter__(self) -> AsyncGenerator[list[Entry], None]:
        return self._batches()

    async def _call(self, command: Any, timeout: float = SEND_TIMEOUT) -> Any:
        """One Redis command, retried with backoff while Redis is unreachable; a group lost
        (Redis restarted without its data) is created again."""
        backoff = Backoff()
        while True:
            try:
                result = await asyncio.wait_for(command(), timeout)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group()
                continue
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._outage.failed(exc)
                await backoff.wait()
                continue
            self._outage.ok()
            return result

    async def _create_group(self) -> None:
        async def create() -> None:
            try:
                await self.bus.redis.xgroup_create(self.bus.stream, self.group, id=self.create_from, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self._call(create)

    async def _batches(self) -> AsyncGenerator[list[Entry], None]:
        redis, stream = self.bus.redis, self.bus.stream
        await self._create_group()
        # 1. our own pending entries (id "0" reads this consumer's pending list from its start)
        after = "0-0"
        while True:
            reply = await self._call(lambda: redis.xreadgroup(self.group, self.consumer, {stream: after},
                                                              count=self.count))
            entries = reply[0][1] if reply else []
            if not entries:
                break
            after = _text(entries[-1][0])
            batch = await self._decoded(entries)
            if batch:
                yield batch
        # 2. entries a dead consumer left behind, then 3. new ones (claiming again now and then)
        claim_at: float | None = time.monotonic()
        while True:
            if claim_at is not None and time.monotonic() >= claim_at:
                async for batch in self._claimed():
                    yield batch
                claim_at = time.monotonic() + self.claim_every if self.claim_every is not None else None
            reply = await self._call(
                lambda: redis.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self.count,
                                         block=self.block_ms),
                self.block_ms / 1000 + SEND_TIMEOUT)
            for _stream, entries in reply or ():
                batch = await self._decoded(entries)
                if batch:
                    yield batch

    async def _claimed(self) -> AsyncGenerator[list[Entry], None]:
        redis, stream = self.bus.redis, self.bus.stream
        start = "0-0"
        idle_ms = int(self.claim_idle * 1000)
        while True:
            reply = await self._call(lambda: redis.xautoclaim(stream, self.group, self.consumer, idle_ms,
                                                              start_id=start, count=self.count))
            start, entries = _text(reply[0]), reply[1]
            # entries deleted from the stream meanwhile come back as None fields: nothing to do
            live = [(entry_id, fields) for entry_id, fields in entries if entry_id is not None and fields]
            if live:
                log.info("bus: group %r: %s claimed %d entries left pending by another consumer",
                         self.group, self.consumer, len(live))
                batch = await self._decoded(live)
                if batch:
                    yield batch
            if start == "0-0":
                return

    async def _decoded(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
        batch: list[Entry] = []
        rejected: list[str] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            if not fields:          # trimmed from the stream (MAXLEN) before it was handled
                log.error("bus: group %r: entry %s was trimmed from %s before it was handled",
                          self.group, entry_id, self.bus.stream)
                rejected.append(entry_id)
                continue
            event = await self.bus._decode(entry_id, fields)
            if event is None:
                rejected.append(entry_id)
            else:
                batch.append((entry_id, event))
        if rejected:
            await self.ack(rejected)
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge handled entries (retried while Redis is unreachable)."""
        if ids:
            await self._call(lambda: self.bus.redis.xack(self.bus.stream, self.group, *ids))
