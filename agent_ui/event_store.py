"""The event log and the live feed: recording bus events (what each changes:
agent_ui.projection_store), handing committed events to listeners, and reading them back
(`events_since`). Reached as `store.events`.

`listen()` hands the web app each event only after it is committed, with its sequence
number, on the listener's loop and in commit order, so a screen shows exactly what is
stored and catching up with `events_since` gives no duplicates:

    queue = store.events.listen()                       # 1. listen first
    for seq, event in store.events.events_since(last):  # 2. then catch up
        send(event); last = seq
    while True:
        seq, event = await queue.get()
        if seq > last: send(event); last = seq          # 3. skip what catch-up already sent

SQLite (one process): the committing thread tells the listeners right after its commit.
PostgreSQL (shared): every store's follower thread (agent_ui.db_postgres.EventFollower)
tells them, whichever process committed; an interim transcript replaced before the
follower read it is skipped (the newer one follows), nothing else is.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from agent_ui.db import Connection, Database
from agent_ui.projection_store import Duplicate, EventProjection
from agent_ui.store_writer import StoreWriter
from callassist.events import TRANSIENT_EVENTS, CallEvent, event_to_dict

if TYPE_CHECKING:
    from callassist.bus import EventBus

EventItem = tuple[int, dict[str, Any]]


class Listener(asyncio.Queue):
    """A live feed of (seq, event dict), filled after each commit. Bounded listeners
    drop their oldest item when full and count it in `dropped` (catch up with
    `events_since`)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.dropped = 0
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        # items committed by other threads, waiting for the loop: kept in one FIFO so
        # that an item offered from the loop's own thread never overtakes them
        self._from_threads: deque[EventItem] = deque()
        self._from_threads_lock = threading.Lock()

    def offer(self, item: EventItem) -> None:
        if self.full():
            self.get_nowait()
            self.dropped += 1
        self.put_nowait(item)

    def deliver(self, item: EventItem) -> bool:
        """Hand over one committed item from any thread (the caller serialises calls in
        commit order); False when the listener's loop is gone."""
        loop = self.loop
        if loop is None:
            self.offer(item)
            return True
        try:
            in_loop_thread = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop_thread = False
        if in_loop_thread:
            self._flush()
            self.offer(item)
            return True
        with self._from_threads_lock:
            self._from_threads.append(item)
            first = len(self._from_threads) == 1
        if first:
            try:
                loop.call_soon_threadsafe(self._flush)
            except RuntimeError:                  # the loop is closed
                return False
        return True

    def _flush(self) -> None:
        with self._from_threads_lock:
            items, self._from_threads = self._from_threads, deque()
        for item in items:
            self.offer(item)


class EventLog:
    """Recording events (any thread), the recorder thread for the bus, the live feed."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self._name = name
        self._projection = EventProjection(db.dialect)
        # held from BEGIN to the last listener notified by every transaction that adds
        # events, whichever connection: listeners get them in commit (= seq) order
        self._events_lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._writer: StoreWriter | None = None
        self._follower: Any = None
        self._follower_lock = threading.Lock()

    # --- recording ------------------------------------------------------------------------

    def record(self, event: CallEvent) -> int:
        """Persist one bus event (and what it changes); listeners hear of it after the
        commit. Returns its sequence number."""
        return self.record_many([event])[0]

    def record_many(self, events: Sequence[CallEvent],
                    origins: Sequence[str | None] | None = None) -> list[int]:
        """Persist several events in ONE transaction (all or nothing), e.g. an imported call.
        `origins`: each event's id on a message bus; an event whose origin is already stored
        (delivered again after a writer died before acknowledging it) is skipped, and its
        stored seq returned. It may wait for another writer: from the event loop, call it
        through Store.off_loop."""
        with self._db.write_connection() as conn:
            return self.record_batch(conn, events, origins)

    def record_batch(self, conn: Connection, events: Sequence[CallEvent],
                     origins: Sequence[str | None] | None = None) -> list[int]:
        """record_many on connection `conn` (the bus recorder's own); listeners are told
        before any other transaction can add events, so they hear them in seq order."""
        if origins is not None and len(origins) != len(events):
            raise ValueError(f"{len(events)} events but {len(origins)} origins")
        items: list[tuple[int, dict[str, Any], bool]] = []
        with self._events_lock:
            with self._db.transaction(conn) as db:
                for index, event in enumerate(events):
                    origin = origins[index] if origins is not None else None
                    stored = origin is not None and db.execute(
                        "SELECT seq FROM events WHERE origin = ?", (origin,)).fetchone()
                    if stored:
                        items.append((stored["seq"], event_to_dict(event), False))
                    else:
                        items.append(self._apply(db, event, origin))
                new = [seq for seq, _, is_new in items if is_new]
                if new:
                    self._db.announce(db, max(new))
            if not self._db.shared:
                for seq, data, is_new in items:
                    if is_new:
                        self._notify((seq, data))
        return [seq for seq, _, _ in items]

    def _apply(self, db: Connection, event: CallEvent, origin: str | None) -> tuple[int, dict[str, Any], bool]:
        """Write one event; returns (seq, wire form, whether it was new)."""
        data = event_to_dict(event)
        partial_key = self._projection.apply(db, event)
        if isinstance(partial_key, Duplicate):
            return partial_key.seq, data, False
        seq = db.execute(
            "INSERT INTO events (call_id, type, payload, at, partial_key, origin) VALUES (?, ?, ?, ?, ?, ?) "
            "RETURNING seq",
            (event.call_id, data["type"], json.dumps(data, ensure_ascii=False), event.at,
             partial_key, origin)).fetchone()[0]
        return int(seq), data, True

    def run(self, bus: EventBus) -> Coroutine[Any, Any, None]:
        """Subscribe to `bus` NOW (so nothing published after this call is missed, even
        before the task first runs) and return the coroutine that hands every event to
        the store's writer thread (never waiting for the database) until cancelled:

            task = asyncio.create_task(store.events.run(bus))
        """
        subscription = bus.subscribe()            # unbounded: the store must not lose events
        writer = self.recorder()

        async def consume() -> None:
            try:
                async for event in subscription:
                    if not isinstance(event, TRANSIENT_EVENTS):
                        writer.submit(event)
            finally:
                while not subscription.queue.empty():        # published before the stop
                    writer.submit(subscription.queue.get_nowait())
                subscription.close()

        return consume()

    def recorder(self) -> StoreWriter:
        """The bus recorder's thread (started on first use; `close()` drains it):
        `recorder().submit(event, origin=None)` from any thread, never blocking."""
        if self._writer is None:
            self._writer = StoreWriter(self._db.recorder_connection, self.record_batch,
                                       name=f"store-writer:{self._name}",
                                       retry_later=self._db.retry_later,
                                       name_events=self._db.shared)
        return self._writer

    @property
    def recorder_backlog(self) -> int:
        """Bus events handed to the recorder and not yet committed (for health views)."""
        return self._writer.backlog if self._writer is not None else 0

    # --- the live feed -------------------------------------------------------------------

    def listen(self, maxsize: int = 0) -> Listener:
        """A queue that receives (seq, event_to_dict(event)) for every event committed
        from now on. Call from the event loop's thread; `unlisten` when done."""
        listener = Listener(maxsize)
        self._listeners.append(listener)
        if self._db.shared:
            self._start_following()
        return listener

    def _start_following(self) -> None:
        with self._follower_lock:
            if self._follower is None:
                self._follower = self._db.follow(self.last_seq(), self.fetch_since, self._deliver)

    @property
    def follower(self) -> Any:
        """The PostgreSQL follower thread once something listens (else None)."""
        return self._follower

    def unlisten(self, queue: asyncio.Queue) -> None:
        try:
            self._listeners.remove(queue)           # type: ignore[arg-type]
        except ValueError:
            pass

    def _deliver(self, items: list[EventItem]) -> None:
        for item in items:
            self._notify(item)

    def _notify(self, item: EventItem) -> None:
        """Called in commit order, from one thread at a time."""
        for listener in tuple(self._listeners):
            if not listener.deliver(item):
                self.unlisten(listener)

    @staticmethod
    def fetch_since(db: Connection, after_seq: int, limit: int) -> list[EventItem]:
        rows = db.execute("SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                          (after_seq, limit)).fetchall()
        return [(int(row[0]), json.loads(row[1])) for row in rows]

    def events_since(self, after_seq: int, call_ids: Iterable[str] | None = None,
                     limit: int | None = None) -> list[EventItem]:
        """Stored events with seq > after_seq, oldest first (optionally of some calls only)."""
        sql = "SELECT seq, payload FROM events WHERE seq > ?"
        params: list[Any] = [after_seq]
        if call_ids is not None:
            sql += f" AND call_id IN ({self._db.dialect.json_values()})"
            params.append(json.dumps(list(call_ids)))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._db.query() as db:
            rows = db.execute(sql, params).fetchall()
        return [(int(row["seq"]), json.loads(row["payload"])) for row in rows]

    def last_seq(self) -> int:
        with self._db.query() as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def close(self) -> None:
        """Store what the bus recorder still holds (StoreWriter.close)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
