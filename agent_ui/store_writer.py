"""The thread that records the bus into the store, off the event loop.

The loop that carries RTP, ARI and the websockets must never wait for SQLite: another
process (`callassist user ...`, `archive import`, a backup) may hold the database's
write lock for seconds. So the bus recorder only hands events to this writer
(`submit`, never blocks) and one thread, with its own connection, writes them:

- strictly in order; what queued up while a write was in progress goes into the next
  transaction as one batch (Store.record_batch);
- "database is locked" is waited out with backoff, never by dropping an event; a
  warning with the backlog says when writes fall behind, another when they caught up;
- listeners hear of committed events on their own loop (Store._notify), in commit order;
- `close()` drains the queue: nothing is lost at a clean stop.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from callassist.events import CallEvent

log = logging.getLogger(__name__)

MAX_BATCH = 500                # events per transaction: keeps each write lock short
RETRY_FIRST = 0.05             # seconds before retrying a locked database, doubling ...
RETRY_MAX = 1.0                # ... up to this
BEHIND_AFTER = 1.0             # an event waiting this long means writes fall behind
WARN_EVERY = 10.0              # while behind, repeat the warning this often
DRAIN_TIMEOUT = 30.0           # close(): how long a locked database may delay the stop

RecordBatch = Callable[[sqlite3.Connection, Sequence[CallEvent]], object]
Connect = Callable[[], sqlite3.Connection]


def is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class StoreWriter:
    """One thread owning one connection: `submit(event)` from anywhere, `close()` drains."""

    def __init__(self, connect: Connect, record_batch: RecordBatch, *, name: str = "store-writer",
                 max_batch: int = MAX_BATCH) -> None:
        self._connect = connect
        self._record_batch = record_batch
        self._max_batch = max_batch
        self._queue: deque[tuple[float, CallEvent]] = deque()   # (monotonic time queued, event)
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

    def submit(self, event: CallEvent) -> None:
        with self._wake:
            if self._closing:
                log.error("store writer closed: %s of call %s not stored", type(event).__name__,
                          getattr(event, "call_id", "?"))
                self.failed += 1
                return
            self._queue.append((time.monotonic(), event))
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

    def _store(self, db: sqlite3.Connection, batch: list[tuple[float, CallEvent]]) -> None:
        """Commit `batch` in one transaction, waiting out locks; a batch that fails for
        another reason is stored event by event so that only the bad event is skipped."""
        events = [event for _, event in batch]
        delay = RETRY_FIRST
        while True:
            try:
                self._record_batch(db, events)
                self.stored += len(events)
                return
            except sqlite3.OperationalError as exc:
                if not is_lock_error(exc):
                    failure: Exception = exc
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
            except Exception as exc:
                failure = exc
                break
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
                    "(%s: another process is writing the database); calls go on, nothing is "
                    "dropped", self.backlog, now - oldest_queued, exc)

    def _check_recovered(self, waiting: int) -> None:
        if self._behind_since is not None and waiting == 0:
            log.warning("store writes caught up after %.1f s behind; %d event(s) stored in all",
                        time.monotonic() - self._behind_since, self.stored)
            self._behind_since = None
