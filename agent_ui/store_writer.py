"""The thread that records the bus into the store, off the event loop.

The loop that carries RTP, ARI and the websockets must never wait for the database:
another process (`callassist user ...`, `archive import`, a backup) may hold SQLite's
write lock for seconds, a PostgreSQL server may be restarting. So the bus recorder only
hands events to this writer (`submit`, never blocks) and one thread, with its own
connection, writes them:

- strictly in order; what queued up while a write was in progress goes into the next
  transaction as one batch (EventLog.record_batch);
- what the engine calls "retry later" (SQLite: database is locked; PostgreSQL: the
  server went away or is restarting, psycopg.OperationalError) is waited out with
  backoff, never by dropping an event; a warning with the backlog says when writes fall
  behind, another when they caught up;
- each event may carry an origin (its id on a message bus): a batch retried after a
  commit whose answer was lost stores nothing twice (EventLog.record_batch skips stored
  origins). With `name_events`, events submitted without one get a unique origin of this
  writer, so that is true of every event (PostgreSQL: a COMMIT can succeed on the server
  while the connection drops before its answer);
- listeners hear of committed events on their own loop, in commit order;
- `close()` drains the queue: nothing is lost at a clean stop.
"""
from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from callassist.events import CallEvent

log = logging.getLogger(__name__)

MAX_BATCH = 500                # events per transaction: keeps each write lock short
RETRY_FIRST = 0.05             # seconds before retrying a locked database, doubling ...
RETRY_MAX = 1.0                # ... up to this
BEHIND_AFTER = 1.0             # an event waiting this long means writes fall behind
WARN_EVERY = 10.0              # while behind, repeat the warning this often
DRAIN_TIMEOUT = 30.0           # close(): how long a locked database may delay the stop

# (connection, events, each one's origin or None) -> seqs
RecordBatch = Callable[[Any, Sequence[CallEvent], Sequence["str | None"]], object]
Connect = Callable[[], Any]


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class StoreWriter:
    """One thread owning one connection: `submit(event)` from anywhere, `close()` drains."""

    def __init__(self, connect: Connect, record_batch: RecordBatch, *, name: str = "store-writer",
                 max_batch: int = MAX_BATCH,
                 retry_later: Callable[[BaseException], bool] = is_lock_error,
                 name_events: bool = False) -> None:
        self._connect = connect
        self._record_batch = record_batch
        self._max_batch = max_batch
        self._retry_later = retry_later
        self._origin_prefix = f"w-{uuid.uuid4().hex[:16]}-" if name_events else None
        self._numbers = itertools.count()
        # (monotonic time queued, event, origin)
        self._queue: deque[tuple[float, CallEvent, str | None]] = deque()
        self._wake = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._give_up_at: float | None = None      # set by close(timeout)
        self._behind_since: float | None = None
        self._warned_at = 0.0
        self.stored = 0                            # events committed (or found duplicate)
        self.failed = 0                            # events that could not be stored at all
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    # --- the producers' side (any thread, never blocks on the database) -----------------

    def submit(self, event: CallEvent, origin: str | None = None) -> None:
        """Queue `event` (origin: its id on a message bus, stored once however often it is
        submitted)."""
        with self._wake:
            if self._closing:
                log.error("store writer closed: %s of call %s not stored", type(event).__name__,
                          getattr(event, "call_id", "?"))
                self.failed += 1
                return
            if origin is None and self._origin_prefix is not None:
                origin = f"{self._origin_prefix}{next(self._numbers)}"
            self._queue.append((time.monotonic(), event, origin))
            self._wake.notify()

    @property
    def backlog(self) -> int:
        """Events submitted but not yet committed."""
        with self._wake:
            return len(self._queue) + self._in_flight

    def close(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Store everything submitted, then stop. If another process keeps the database
        locked beyond `timeout`, what is left is logged as lost and the thread stops."""
        with self._wake:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            self._wake.notify()
        self._thread.join()

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            db = self._connect()
        except BaseException as exc:          # reported to the constructor's caller
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    if not self._queue:
                        return                                  # closing, drained
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue),
                                                                      self._max_batch))]
                    self._in_flight = len(batch)
                self._store(db, batch)
                with self._wake:
                    self._in_flight = 0
                    waiting = len(self._queue)
                self._check_recovered(waiting)
        finally:
            db.close()

    def _store(self, db: Any, batch: list[tuple[float, CallEvent, str | None]]) -> None:
        """Commit `batch` in one transaction, waiting out locks and outages; a batch that
        fails for another reason is stored event by event so that only the bad event is
        skipped."""
        events = [event for _, event, _ in batch]
        origins = [origin for _, _, origin in batch]
        delay = RETRY_FIRST
        failure: Exception
        while True:
            try:
                self._record_batch(db, events, origins)
                self.stored += len(events)
                return
            except Exception as exc:
                if not self._retry_later(exc):
                    failure = exc
                    break
                if self._giving_up():
                    log.error("store writer stopping with the database still locked: %d event(s) "
                              "not stored (%s)", self.backlog, exc)
                    self.failed += self.backlog
                    with self._wake:
                        self._queue.clear()
                    return
                self._check_behind(batch[0][0], exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        if len(batch) > 1:
            for item in batch:
                self._store(db, [item])
            return
        self.failed += 1
        log.error("could not store %s of call %s: %r", type(events[0]).__name__,
                  getattr(events[0], "call_id", "?"), failure, exc_info=failure)

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() > self._give_up_at

    def _check_behind(self, oldest_queued: float, exc: Exception) -> None:
        now = time.monotonic()
        if now - oldest_queued < BEHIND_AFTER:
            return
        if self._behind_since is None:
            self._behind_since = oldest_queued
        elif now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        log.warning("store writes are falling behind: %d event(s) waiting, the oldest for %.1f s "
                    "(%s: another process is writing the database, or it is unreachable); calls go on, nothing is "
                    "dropped", self.backlog, now - oldest_queued, exc)

    def _check_recovered(self, waiting: int) -> None:
        if self._behind_since is not None and waiting == 0:
            log.warning("store writes caught up after %.1f s behind; %d event(s) stored in all",
                        time.monotonic() - self._behind_since, self.stored)
            self._behind_since = None
