"""The store writer of a cluster: the bus -> the database, on one web node at a time.

While this node holds the "store-writer" lease (callassist.leases) it reads consumer group
"store" of callassist:events in batches and records each batch in ONE transaction with the
events' stream ids as their origins, then acknowledges it (XACK). A crash between the commit
and the XACK leaves the batch pending: the next writer (this node restarted, or the new
lease holder, which claims the dead one's entries) records it again and the store skips
every event whose origin it already has, so nothing is lost and nothing is stored twice.
Transient events (TRANSIENT_EVENTS) are acknowledged without being stored. A database or
Redis outage is waited out with backoff, retrying the same batch.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from callassist.events import TRANSIENT_EVENTS, CallEvent
from callassist.leases import Lease
from callassist.redis_bus import Backoff, Outage, RedisEventBus

log = logging.getLogger(__name__)

LEASE_NAME = "store-writer"
GROUP = "store"
LEASE_TTL = 5.0
BATCH = 500
DB_RETRY_MAX = 5.0


class EventRecorder(Protocol):
    """What the feed needs of the store's event log (agent_ui.event_store.EventLog)."""

    def record_many(self, events: Sequence[CallEvent], origins: Sequence[str] | None = None) -> list[int]: ...


class EventStore(Protocol):
    """What the feed needs of agent_ui.store's Store (either engine): its event log, written
    through its request-write thread so the feed never blocks the event loop."""

    @property
    def events(self) -> EventRecorder: ...

    async def off_loop(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


class StoreFeed:
    def __init__(self, bus: RedisEventBus, store: EventStore, node_id: str, *, lease_ttl: float = LEASE_TTL,
                 batch: int = BATCH) -> None:
        self.bus = bus
        self.store = store
        self.node_id = node_id
        self.batch = batch
        self.lease = Lease(bus.redis, LEASE_NAME, node_id, ttl=lease_ttl)
        self.stored = 0              # events handed to the store (a replayed one counts again)
        self.skipped = 0             # transient events acknowledged without storing

    async def run(self) -> None:
        """Contend for the lease and feed while holding it; cancel to stop (releases it)."""
        await self.lease.run(self.feed)

    async def feed(self) -> None:
        """Record the group's entries until cancelled (call only while holding the lease).
        Only the lease holder reads the group, so entries pending for any other consumer
        belong to a writer that lost the lease or died: they are claimed at once."""
        reader = self.bus.group(GROUP, self.node_id, count=self.batch, claim_idle=0.0)
        outage = Outage("store feed: the database", "retrying the batch")
        async for entries in reader:
            keep = [(entry_id, event) for entry_id, event in entries if not isinstance(event, TRANSIENT_EVENTS)]
            if keep:
                events = [event for _id, event in keep]
                origins = [entry_id for entry_id, _ in keep]
                backoff = Backoff(most=DB_RETRY_MAX)
                while True:
                    try:
                        await self.store.off_loop(self.store.events.record_many, events, origins=origins)
                        break
                    except Exception as exc:          # the database: down, locked, restarting
                        outage.failed(exc, f" ({len(events)} events, first {origins[0]})")
                        await backoff.wait()
                outage.ok()
                self.stored += len(events)
            self.skipped += len(entries) - len(keep)
            await reader.ack([entry_id for entry_id, _ in entries])

    @property
    def leading(self) -> bool:
        return self.lease.held

