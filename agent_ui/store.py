"""The one module that owns the SQLite database: calls, their events, transcripts,
prompt cards and QA reviews; web accounts (users, sessions, failed logins, the audit
log) are in agent_ui.account_store.AccountStore, reached as `store.accounts`.

One file (data_dir/callassist.db) in WAL mode, so the web app keeps serving reads
while the store writes, and `callassist user ...` / `archive import` can write from
another process. Schema: agent_ui.migrations, applied in order on open.

Three connections, so that nothing on the event loop (RTP, ARI, websockets) waits
for another process holding the write lock (WAL readers never wait for writers):
reads (`_read`, short, fine on the loop); writes asked for by requests and commands
(`_write`: on the loop only via `await store.off_loop(fn, ...)`, which runs them on
one worker thread); and the bus recorder's own thread (agent_ui.store_writer:
`run(bus)` hands it every bus event, it batches, waits out locks, drains on close).
`listen()` hands the web app each event only after it is committed, with its
sequence number, on the listener's loop and in commit order, so a screen shows
exactly what is stored and catching up with `events_since` gives no duplicates:

    queue = store.listen()                       # 1. listen first
    for seq, event in store.events_since(last):  # 2. then catch up
        send(event); last = seq
    while True:
        seq, event = await queue.get()
        if seq > last: send(event); last = seq   # 3. skip what catch-up already sent

Interim transcripts are kept in `events` only as the latest one per utterance (an
older interim of the same utterance is deleted when a newer one or the final
arrives); final transcripts also go to `utterances` (full-text searchable).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_ui.migrations import MIGRATIONS
from agent_ui.risk import call_risk
from agent_ui.store_writer import StoreWriter
from callassist.events import (TRANSIENT_EVENTS, AgentJoined, CallEnded, CallEvent, CallFault, CallReadingUpdated,
                               CallStarted, CardConfirmed, CardFired, CardWithdrawn, TranscriptRevised,
                               TranscriptUpdate, event_to_dict)
from prompts.normalize import normalize

if TYPE_CHECKING:
    from callassist.bus import EventBus
    from callassist.config import Config

log = logging.getLogger(__name__)

DB_NAME = "callassist.db"
RECORDINGS_DIR = "recordings"
CALL_STATUSES = ("live", "ended")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
FTS_MIN_CHARS = 3                      # trigram tokens: shorter queries use LIKE
AUDIT_RETENTION_DAYS = 400           # logins and user changes: over a year of history
PURGE_BATCH = 200                      # calls deleted per transaction
RECORDER_BUSY_TIMEOUT = 0.1            # the bus recorder retries itself (StoreWriter)
# (call id, its stored recording inside data_dir/recordings or None) -> (file, seconds) or None
RecordingRecovery = Callable[[str, "Path | None"], "tuple[Path, float] | None"]


@dataclass(frozen=True)
class _Duplicate:
    """An event that repeats one already stored: nothing is written or announced."""
    seq: int


class StoreError(ValueError):
    """A request the database cannot satisfy; the message says why."""


def search_form(text: str) -> str:
    """What the full-text index holds and queries are reduced to: the matcher's
    normalisation (no spaces or punctuation, simplified, half-width, lower case), so
    "工信部 投诉" in an ASR result is found by "工信部投訴"."""
    return normalize(text)


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
        self._from_threads: deque[tuple[int, dict[str, Any]]] = deque()
        self._from_threads_lock = threading.Lock()

    def offer(self, item: tuple[int, dict[str, Any]]) -> None:
        if self.full():
            self.get_nowait()
            self.dropped += 1
        self.put_nowait(item)

    def deliver(self, item: tuple[int, dict[str, Any]]) -> bool:
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


class Store:
    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.recordings_dir = self.path.parent / RECORDINGS_DIR
        self._lock = threading.RLock()             # the read connection, self._db
        self._write_lock = threading.RLock()       # the request/command write connection
        # held from BEGIN to the last listener notified by every transaction that adds
        # events, whichever connection: listeners get them in commit (= seq) order
        self._events_lock = threading.RLock()
        self._writer: StoreWriter | None = None
        self._request_writes: ThreadPoolExecutor | None = None
        self._listeners: list[Listener] = []
        from agent_ui.account_store import AccountStore   # it imports this module
        self.accounts = AccountStore(self)
        from agent_ui.analytics_store import AnalyticsStore   # it imports this module
        self.analytics = AnalyticsStore(self)
        from agent_ui.trends_store import TrendStore
        self.trends = TrendStore(self)
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path}: directory {self.path.parent} does not exist")
        created = not self.path.exists()
        try:
            self._db = self._connect(busy_timeout)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable callassist database: {exc}") from None
        try:
            self._write_db = self._connect(busy_timeout)
            if created:
                os.chmod(self.path, 0o600)        # password hashes and call transcripts
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._close_connections()
            raise StoreError(f"{self.path}: not a usable callassist database: {exc}") from None
        except BaseException:
            self._close_connections()
            raise

    # --- connection, transactions, schema -------------------------------------------

    def _connect(self, busy_timeout: float, *, same_thread: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                             check_same_thread=same_thread)
        db.row_factory = sqlite3.Row
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: the file system does not support SQLite WAL mode "
                                 f"(journal mode stays {mode!r}); put data_dir on a local disk")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    def _close_connections(self) -> None:
        for name in ("_write_db", "_db"):
            db = getattr(self, name, None)
            if db is not None:
                db.close()

    @staticmethod
    @contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so a concurrent writer waits
        (busy_timeout) instead of failing on lock upgrade."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the write connection. It may wait busy_timeout for
        another process: from the event loop, call the method through `off_loop`."""
        with self._write_lock, self._transaction(self._write_db) as db:
            yield db

    async def off_loop(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` (a store or accounts method that writes) on the one
        thread for request writes, so a request handler never stalls the event loop
        while another process holds the database; its default-pool neighbours are not
        starved either."""
        if self._request_writes is None:
            self._request_writes = ThreadPoolExecutor(1, thread_name_prefix="store-request-writes")
        return await asyncio.get_running_loop().run_in_executor(
            self._request_writes, lambda: method(*args, **kwargs))

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Several SELECTs seeing one snapshot."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        latest = MIGRATIONS[-1].version
        if self.schema_version > latest:
            raise StoreError(f"{self.path}: schema version {self.schema_version} is newer than "
                             f"this callassist understands ({latest}); upgrade callassist")
        for step in MIGRATIONS:
            if self.schema_version >= step.version:
                continue
            try:
                with self._write() as db:
                    current = db.execute("PRAGMA user_version").fetchone()[0]
                    if current >= step.version:           # another process got there first
                        continue
                    if current != step.version - 1:
                        raise StoreError(f"{self.path}: schema version {current} cannot be "
                                         f"migrated to {step.version}")
                    for statement in step.statements:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {step.version}")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: migration to schema {step.version} "
                                 f"({step.description}) failed, database left at schema "
                                 f"{self.schema_version}: {exc}") from None
            log.info("database %s migrated to schema %d (%s)", self.path, step.version,
                     step.description)

    def close(self) -> None:
        """Store what the bus recorder still holds (StoreWriter.close), then close."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._request_writes is not None:
            self._request_writes.shutdown(wait=True)
            self._request_writes = None
        with self._write_lock, self._lock:
            try:
                self._write_db.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            self._close_connections()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- recording bus events -------------------------------------------------------

    def record(self, event: CallEvent) -> int:
        """Persist one bus event (and what it changes); listeners hear of it after the
        commit. Returns its sequence number."""
        return self.record_many([event])[0]

    def record_many(self, events: Sequence[CallEvent], origins: Sequence[str] | None = None) -> list[int]:
        """Persist several events in ONE transaction (all or nothing), e.g. an imported call.
        `origins`: each event's id on a message bus; an event whose origin is already stored
        (delivered again after a writer died before acknowledging it) is skipped, and its
        stored seq returned."""
        with self._write_lock:
            return self.record_batch(self._write_db, events, origins)

    def record_batch(self, db: sqlite3.Connection, events: Sequence[CallEvent],
                     origins: Sequence[str] | None = None) -> list[int]:
        """record_many on connection `db` (the bus recorder's own); listeners are told
        before any other transaction can add events, so they hear them in seq order."""
        if origins is not None and len(origins) != len(events):
            raise ValueError(f"{len(events)} events but {len(origins)} origins")
        items: list[tuple[int, dict[str, Any], bool]] = []
        with self._events_lock:
            with self._transaction(db):
                for index, event in enumerate(events):
                    origin = origins[index] if origins is not None else None
                    stored = origin is not None and db.execute(
                        "SELECT seq FROM events WHERE origin = ?", (origin,)).fetchone()
                    if stored:
                        items.append((stored["seq"], event_to_dict(event), False))
                    else:
                        items.append(self._apply(db, event, origin))
            for seq, data, new in items:
                if new:
                    self._notify((seq, data))
        return [seq for seq, _, _ in items]

    def _apply(self, db: sqlite3.Connection, event: CallEvent,
               origin: str | None = None) -> tuple[int, dict[str, Any], bool]:
        """Write one event; returns (seq, wire form, whether it was new)."""
        data = event_to_dict(event)
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a call event: {type(event).__name__}")
        self._ensure_call(db, event)
        partial_key = handler(self, db, event)
        if isinstance(partial_key, _Duplicate):
            return partial_key.seq, data, False
        cur = db.execute(
            "INSERT INTO events (call_id, type, payload, at, partial_key, origin) VALUES (?, ?, ?, ?, ?, ?)",
            (event.call_id, data["type"], json.dumps(data, ensure_ascii=False), event.at,
             partial_key, origin))
        assert cur.lastrowid is not None        # set by every INSERT
        return cur.lastrowid, data, True

    @staticmethod
    def _ensure_call(db: sqlite3.Connection, event: CallEvent) -> None:
        """Any event may be the first one seen of a call (order across legs is not
        guaranteed): make sure its row exists, started no later than the event."""
        started = event.at - event.duration if isinstance(event, CallEnded) else event.at
        db.execute("INSERT OR IGNORE INTO calls (call_id, started_at) VALUES (?, ?)",
                   (event.call_id, started))

    def _on_call_started(self, db: sqlite3.Connection, e: CallStarted) -> None:
        # MIN: a repeated CallStarted does not move the start; events seen before it
        # (legs are not ordered) made the row with their own, later time
        # the recording's path is linked as soon as it is opened: a crash cannot lose it
        db.execute("UPDATE calls SET caller = ?, source = ?, started_at = MIN(started_at, ?), "
                   "recording_path = COALESCE(?, recording_path) WHERE call_id = ?",
                   (e.caller, e.source, e.at, e.recording, e.call_id))

    def _on_agent_joined(self, db: sqlite3.Connection, e: AgentJoined) -> None:
        db.execute("INSERT OR IGNORE INTO call_agents (call_id, endpoint, joined_at) VALUES (?, ?, ?)",
                   (e.call_id, e.endpoint, e.at))
        db.execute("UPDATE calls SET agent_endpoint = ? WHERE call_id = ?", (e.endpoint, e.call_id))

    def _on_transcript(self, db: sqlite3.Connection, e: TranscriptUpdate) -> str | None:
        key = f"{e.call_id}\x1f{e.speaker}\x1f{e.utterance}"
        db.execute("DELETE FROM events WHERE partial_key = ?", (key,))   # older interim
        if not e.final:
            return key
        if e.text.strip():
            db.execute(
                """INSERT INTO utterances (call_id, speaker, utterance, text, start, "end", final,
                                           search_text)
                   VALUES (?, ?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (call_id, speaker, utterance) DO UPDATE SET
                       text = excluded.text, start = excluded.start, "end" = excluded."end",
                       search_text = excluded.search_text""",
                (e.call_id, e.speaker, e.utterance, e.text, e.start, e.end, search_form(e.text)))
        return None

    def _on_transcript_revised(self, db: sqlite3.Connection, e: TranscriptRevised) -> None:
        """The accurate post-call transcript replaces the live one (numbered per speaker)."""
        db.execute("DELETE FROM utterances WHERE call_id = ?", (e.call_id,))
        counters: dict[str, int] = {}
        for line in e.lines:
            index = counters[line.speaker] = counters.get(line.speaker, -1) + 1
            db.execute(
                """INSERT INTO utterances (call_id, speaker, utterance, text, start, "end", final,
                                           search_text) VALUES (?, ?, ?, ?, ?, ?, 1, ?)""",
                (e.call_id, line.speaker, index, line.text, line.start, line.end, search_form(line.text)))

    def _on_card_fired(self, db: sqlite3.Connection, e: CardFired) -> _Duplicate | None:
        c = e.card
        known = db.execute("SELECT call_id, status FROM cards WHERE card_id = ?", (c.card_id,)).fetchone()
        if known and known["call_id"] != e.call_id:
            log.error("card %s fired on call %s already belongs to call %s; card not stored",
                      c.card_id, e.call_id, known["call_id"])
            return None
        if known and not (c.confirmed and known["status"] == "fired"):
            # the same card again: nothing changes, so no second event either
            seq = db.execute("""SELECT seq FROM events WHERE call_id = ? AND type = 'CardFired'
                                AND json_extract(payload, '$.card.card_id') = ?
                                ORDER BY seq LIMIT 1""", (e.call_id, c.card_id)).fetchone()
            return _Duplicate(seq[0] if seq else 0)
        db.execute(
            """INSERT INTO cards (card_id, call_id, category, title, severity, speaker, text, phrase,
                                  heard, via, score, start, "end", utterance, script, citations,
                                  alert_supervisor, status, fired_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (card_id) DO UPDATE SET status = 'confirmed'
                   WHERE cards.status = 'fired' AND excluded.status = 'confirmed'""",
            (c.card_id, e.call_id, c.category, c.title, c.severity, c.speaker, c.text, c.phrase,
             c.heard, c.via, c.score, c.start, c.end, c.utterance,
             json.dumps(list(c.script), ensure_ascii=False),
             json.dumps(event_to_dict(e)["card"]["citations"], ensure_ascii=False),
             int(c.alert_supervisor), "confirmed" if c.confirmed else "fired", e.at))
        self._update_risk(db, e.call_id)
        return None

    def _on_card_confirmed(self, db: sqlite3.Connection, e: CardConfirmed) -> None:
        db.execute("""UPDATE cards SET status = 'confirmed', text = ?, "end" = ?
                      WHERE card_id = ? AND call_id = ?""", (e.text, e.end, e.card_id, e.call_id))
        self._update_risk(db, e.call_id)

    def _on_card_withdrawn(self, db: sqlite3.Connection, e: CardWithdrawn) -> None:
        db.execute("UPDATE cards SET status = 'withdrawn' WHERE card_id = ? AND call_id = ?",
                   (e.card_id, e.call_id))
        self._update_risk(db, e.call_id)

    def _on_call_ended(self, db: sqlite3.Connection, e: CallEnded) -> None:
        db.execute("""UPDATE calls SET status = 'ended', ended_at = ?, duration = ?,
                                       recording_path = COALESCE(?, recording_path)
                      WHERE call_id = ?""", (e.at, e.duration, e.recording, e.call_id))

    def _on_call_fault(self, db: sqlite3.Connection, e: CallFault) -> None:
        return None                       # the event row is the record

    def _on_call_reading(self, db: sqlite3.Connection, e: CallReadingUpdated) -> None:
        return None                       # the event row is the record (the final one: store.analytics)

    _HANDLERS: dict[type, Callable[..., str | _Duplicate | None]] = {
        CallStarted: _on_call_started, AgentJoined: _on_agent_joined,
        TranscriptRevised: _on_transcript_revised,
        TranscriptUpdate: _on_transcript, CardFired: _on_card_fired,
        CardConfirmed: _on_card_confirmed, CardWithdrawn: _on_card_withdrawn,
        CallEnded: _on_call_ended, CallFault: _on_call_fault, CallReadingUpdated: _on_call_reading,
    }

    @staticmethod
    def _update_risk(db: sqlite3.Connection, call_id: str) -> None:
        rows = db.execute("SELECT category, severity FROM cards WHERE call_id = ? AND status != "
                          "'withdrawn'", (call_id,)).fetchall()
        db.execute("UPDATE calls SET risk = ? WHERE call_id = ?",
                   (call_risk((r["category"], r["severity"]) for r in rows), call_id))

    def run(self, bus: EventBus) -> Coroutine[Any, Any, None]:
        """Subscribe to `bus` NOW (so nothing published after this call is missed, even
        before the task first runs) and return the coroutine that hands every event to
        the store's writer thread (never waiting for the database) until cancelled:

            task = asyncio.create_task(store.run(bus))
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
        """The bus recorder's thread (started on first use; `close()` drains it)."""
        if self._writer is None:
            self._writer = StoreWriter(lambda: self._connect(RECORDER_BUSY_TIMEOUT, same_thread=True),
                                       self.record_batch, name=f"store-writer:{self.path.name}")
        return self._writer

    @property
    def recorder_backlog(self) -> int:
        """Bus events handed to the recorder and not yet committed (for health views)."""
        return self._writer.backlog if self._writer is not None else 0

    def interrupted_calls(self) -> list[dict[str, Any]]:
        """Calls a previous run left 'live' (call at start-up, before any call can start):
        call_id, source, caller, started_at, recording (its stored file inside
        data_dir/recordings, or None), last_event_at and next_utterance (the utterance
        numbers below it are taken), for tapping them again if they are still up."""
        with self._lock:
            rows = self._db.execute(
                """SELECT c.call_id, c.source, c.caller, c.started_at, c.recording_path,
                          (SELECT MAX(e.at) FROM events e WHERE e.call_id = c.call_id) AS last_event_at,
                          (SELECT COALESCE(MAX(json_extract(e.payload, '$.utterance')), -1) + 1
                           FROM events e WHERE e.call_id = c.call_id AND e.type = 'TranscriptUpdate'
                          ) AS next_utterance
                   FROM calls c WHERE c.status = 'live' ORDER BY c.started_at""").fetchall()
        return [{"call_id": r["call_id"], "source": r["source"], "caller": r["caller"] or "",
                 "started_at": r["started_at"], "recording": self._in_recordings(r["recording_path"]),
                 "last_event_at": r["last_event_at"], "next_utterance": r["next_utterance"]}
                for r in rows]

    def close_interrupted_calls(self, now: float | None = None,
                                problem: str = "callassist restarted during the call", *,
                                recover: RecordingRecovery | None = None,
                                call_ids: Collection[str] | None = None) -> int:
        """Mark calls left 'live' by a previous run as ended: a CallFault and a CallEnded
        each. `recover(call_id, stored recording or None)` makes the call's recording
        whole and returns (its path, seconds of audio in it): the CallEnded links that
        file and gives that length, so the downtime is not counted as call time.
        Without a recording a call lasts until its last stored event. With `call_ids`,
        only those (the ones found live at start-up: calls started since are not
        leftovers). It may take a while (FLAC is encoded here); returns how many were closed."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                """SELECT c.call_id, c.started_at, c.recording_path,
                          (SELECT MAX(e.at) FROM events e WHERE e.call_id = c.call_id) AS last_at
                   FROM calls c WHERE c.status = 'live'""").fetchall()
        closed = 0
        for row in rows:
            call_id = row["call_id"]
            if call_ids is not None and call_id not in call_ids:
                continue
            problems = [problem]
            recording: str | None = None
            duration = max(0.0, (row["last_at"] or row["started_at"]) - row["started_at"])
            if recover is not None:
                try:
                    found = recover(call_id, self._in_recordings(row["recording_path"]))
                except Exception as exc:       # a damaged file: keep it and the stored link
                    log.error("call %s: recording not recovered: %s", call_id, exc)
                    problems.append(f"recording not recovered: {exc}")
                else:
                    if found is not None:
                        recording, duration = str(found[0]), found[1]
            self.record_many([
                CallFault(call_id, "; ".join(problems), at=now),
                CallEnded(call_id, round(duration, 3), recording=recording,
                          at=row["started_at"] + duration)])
            closed += 1
        return closed

    # --- live feed ------------------------------------------------------------------

    def listen(self, maxsize: int = 0) -> Listener:
        """A queue that receives (seq, event_to_dict(event)) for every event committed
        from now on. Call from the event loop's thread; `unlisten` when done."""
        listener = Listener(maxsize)
        self._listeners.append(listener)
        return listener

    def unlisten(self, queue: asyncio.Queue) -> None:
        try:
            self._listeners.remove(queue)           # type: ignore[arg-type]
        except ValueError:
            pass

    def _notify(self, item: tuple[int, dict[str, Any]]) -> None:
        """Called with _events_lock held, in commit order, from the committing thread."""
        for listener in tuple(self._listeners):
            if not listener.deliver(item):
                self.unlisten(listener)

    def events_since(self, after_seq: int, call_ids: Iterable[str] | None = None,
                     limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Stored events with seq > after_seq, oldest first (optionally of some calls only)."""
        sql = "SELECT seq, payload FROM events WHERE seq > ?"
        params: list[Any] = [after_seq]
        if call_ids is not None:
            sql += " AND call_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(call_ids)))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [(row["seq"], json.loads(row["payload"])) for row in rows]

    def last_seq(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    # --- calls ----------------------------------------------------------------------

    def _call_filters(self, *, endpoints: list[str] | None, date_from: float | None,
                      date_to: float | None, category: str | None, severity: str | None,
                      agent: str | None, text: str | None, status: str | None,
                      risk: str | None) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []

        def on_endpoints(names: list[str]) -> None:
            where.append("(c.agent_endpoint IN (SELECT value FROM json_each(?)) OR EXISTS "
                         "(SELECT 1 FROM call_agents a WHERE a.call_id = c.call_id AND a.endpoint IN "
                         "(SELECT value FROM json_each(?))))")
            params.extend([json.dumps(names)] * 2)

        if endpoints is not None:
            on_endpoints(list(endpoints))
        if agent:
            owned = [r[0] for r in self._db.execute(
                "SELECT endpoint FROM user_endpoints WHERE username = ?", (agent,))]
            on_endpoints([agent, *owned])
        if date_from is not None:
            where.append("c.started_at >= ?")
            params.append(date_from)
        if date_to is not None:
            where.append("c.started_at <= ?")
            params.append(date_to)
        for column, value in (("category", category), ("severity", severity)):
            if value:
                where.append(f"EXISTS (SELECT 1 FROM cards k WHERE k.call_id = c.call_id "
                             f"AND k.{column} = ? AND k.status != 'withdrawn')")
                params.append(value)
        if status:
            if status not in CALL_STATUSES:
                raise StoreError(f"status must be one of {', '.join(CALL_STATUSES)}, got {status!r}")
            where.append("c.status = ?")
            params.append(status)
        if risk:
            where.append("c.risk = ?")
            params.append(risk)
        if text:
            clause, value = self._text_clause(text)
            if clause:
                where.append(clause)
                params.append(value)
        return (" WHERE " + " AND ".join(where)) if where else "", params

    @staticmethod
    def _text_clause(text: str) -> tuple[str, str]:
        query = search_form(text)
        if not query:
            return "", ""
        if len(query) >= FTS_MIN_CHARS:
            return ("c.call_id IN (SELECT u.call_id FROM utterances u WHERE u.id IN "
                    "(SELECT rowid FROM utterances_fts WHERE utterances_fts MATCH ?))",
                    '"' + query.replace('"', '""') + '"')
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return ("EXISTS (SELECT 1 FROM utterances u WHERE u.call_id = c.call_id "
                "AND u.search_text LIKE ? ESCAPE '\\')", f"%{escaped}%")

    _CALL_COLUMNS = ("c.call_id, c.source, c.caller, c.agent_endpoint, c.started_at, c.ended_at, "
                     "c.duration, c.recording_path, c.status, c.risk, "
                     "u.username AS agent_username, u.display_name AS agent_name")
    _CALL_FROM = ("FROM calls c LEFT JOIN user_endpoints ue ON ue.endpoint = c.agent_endpoint "
                  "LEFT JOIN users u ON u.username = ue.username")

    def list_calls(self, *, endpoints: list[str] | None = None, date_from: float | None = None,
                   date_to: float | None = None, category: str | None = None,
                   severity: str | None = None, agent: str | None = None, text: str | None = None,
                   status: str | None = None, risk: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[dict[str, Any]]:
        """Calls matching every filter given, newest first.

        endpoints: only calls any of these agent endpoints took part in ([] -> none);
        date_from/date_to: epoch seconds, inclusive, on started_at; category/severity:
        calls with a standing (not withdrawn) card of it; agent: an endpoint or a username
        (its endpoints); text: in the final transcript (normalised substring; 3+ characters
        use the trigram index, shorter ones a scan); status: live|ended; risk.
        Each dict: the call columns, agent_username/agent_name, categories (in order of
        first card), max_severity (None without cards), card_count, and with `text`,
        snippets: up to 3 matching utterances."""
        with self._read() as db:
            where, params = self._call_filters(
                endpoints=endpoints, date_from=date_from, date_to=date_to, category=category,
                severity=severity, agent=agent, text=text, status=status, risk=risk)
            rows = db.execute(f"SELECT {self._CALL_COLUMNS} {self._CALL_FROM}{where} "
                              "ORDER BY c.started_at DESC, c.call_id LIMIT ? OFFSET ?",
                              [*params, max(0, int(limit)), max(0, int(offset))]).fetchall()
            calls = [dict(r) for r in rows]
            self._add_card_summary(db, calls)
            if text and search_form(text):
                self._add_snippets(db, calls, search_form(text))
        return calls

    def count_calls(self, **filters: Any) -> int:
        """How many calls list_calls(**filters) would give without limit/offset."""
        filters = {k: filters.get(k) for k in ("endpoints", "date_from", "date_to", "category",
                                               "severity", "agent", "text", "status", "risk")}
        with self._lock:
            where, params = self._call_filters(**filters)
            return self._db.execute(f"SELECT COUNT(*) FROM calls c{where}", params).fetchone()[0]

    @staticmethod
    def _add_card_summary(db: sqlite3.Connection, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            call.update(categories=[], max_severity=None, card_count=0)
        if not calls:
            return
        by_id = {call["call_id"]: call for call in calls}
        rows = db.execute("SELECT call_id, category, severity FROM cards WHERE status != 'withdrawn' "
                          "AND call_id IN (SELECT value FROM json_each(?)) ORDER BY start",
                          (json.dumps(list(by_id)),)).fetchall()
        for row in rows:
            call = by_id[row["call_id"]]
            call["card_count"] += 1
            if row["category"] not in call["categories"]:
                call["categories"].append(row["category"])
            if call["max_severity"] is None or (SEVERITY_RANK.get(row["severity"], 0)
                                                > SEVERITY_RANK.get(call["max_severity"], 0)):
                call["max_severity"] = row["severity"]

    @staticmethod
    def _add_snippets(db: sqlite3.Connection, calls: list[dict[str, Any]], query: str) -> None:
        for call in calls:
            rows = db.execute("""SELECT speaker, start, "end", text FROM utterances
                                 WHERE call_id = ? AND instr(search_text, ?) > 0
                                 ORDER BY start LIMIT 3""", (call["call_id"], query)).fetchall()
            call["snippets"] = [dict(r) for r in rows]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The call (as in list_calls) plus agents (every endpoint that joined), utterances
        (final, by start), cards (all, withdrawn included, by start), faults, review (the
        latest saved) and reviews (all, latest first)."""
        with self._read() as db:
            row = db.execute(f"SELECT {self._CALL_COLUMNS} {self._CALL_FROM} WHERE c.call_id = ?",
                             (call_id,)).fetchone()
            if row is None:
                return None
            call = dict(row)
            self._add_card_summary(db, [call])
            call["agents"] = [r[0] for r in db.execute(
                "SELECT endpoint FROM call_agents WHERE call_id = ? ORDER BY joined_at", (call_id,))]
            call["utterances"] = [dict(r) for r in db.execute(
                """SELECT speaker, utterance, text, start, "end", final FROM utterances
                   WHERE call_id = ? ORDER BY start, speaker""", (call_id,))]
            for utt in call["utterances"]:
                utt["final"] = bool(utt["final"])
            call["cards"] = [self._card_dict(r) for r in db.execute(
                "SELECT * FROM cards WHERE call_id = ? ORDER BY start, fired_at", (call_id,))]
            call["faults"] = [{"problem": json.loads(r["payload"])["problem"], "at": r["at"]}
                              for r in db.execute("SELECT payload, at FROM events WHERE call_id = ? "
                                                  "AND type = 'CallFault' ORDER BY seq", (call_id,))]
            call["reviews"] = [dict(r) for r in db.execute(
                "SELECT * FROM reviews WHERE call_id = ? ORDER BY updated_at DESC", (call_id,))]
            call["review"] = call["reviews"][0] if call["reviews"] else None
        return call

    @staticmethod
    def _card_dict(row: sqlite3.Row) -> dict[str, Any]:
        card = dict(row)
        card["script"] = json.loads(card["script"])
        card["citations"] = json.loads(card["citations"])
        card["alert_supervisor"] = bool(card["alert_supervisor"])
        card["helpful"] = None if card["helpful"] is None else bool(card["helpful"])
        card["confirmed"] = card["status"] == "confirmed"
        return card

    def live_calls(self) -> list[dict[str, Any]]:
        """Calls in progress, riskiest first, then oldest first."""
        calls = self.list_calls(status="live", limit=10_000)
        calls.sort(key=lambda c: (-("normal", "warning", "critical").index(c["risk"]), c["started_at"]))
        return calls

    def card_call_id(self, card_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT call_id FROM cards WHERE card_id = ?", (card_id,)).fetchone()
        return row[0] if row else None

    def get_card(self, card_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM cards WHERE card_id = ?", (card_id,)).fetchone()
        return self._card_dict(row) if row else None

    def acknowledge_card(self, card_id: str, username: str, at: float | None = None) -> bool:
        """The agent saw the card. The first acknowledgement is kept. False: no such card."""
        with self._write() as db:
            db.execute("""UPDATE cards SET acknowledged_by = ?, acknowledged_at = ?
                          WHERE card_id = ? AND acknowledged_by IS NULL""",
                       (username, time.time() if at is None else at, card_id))
            return db.execute("SELECT 1 FROM cards WHERE card_id = ?", (card_id,)).fetchone() is not None

    def card_feedback(self, card_id: str, username: str, helpful: bool, at: float | None = None) -> bool:
        """Was the card helpful? The latest answer counts. False: no such card."""
        with self._write() as db:
            cur = db.execute("UPDATE cards SET helpful = ?, feedback_by = ?, feedback_at = ? "
                             "WHERE card_id = ?", (int(bool(helpful)), username,
                                                   time.time() if at is None else at, card_id))
            return cur.rowcount > 0

    def save_review(self, call_id: str, reviewer: str, verdict: str, notes: str = "",
                    adherence_score: float | None = None) -> bool:
        """Create or replace `reviewer`'s review of the call. False: no such call."""
        if not verdict:
            raise StoreError("a review needs a verdict")
        if adherence_score is not None and not 0 <= adherence_score <= 100:
            raise StoreError(f"adherence_score must be between 0 and 100, got {adherence_score}")
        with self._write() as db:
            if db.execute("SELECT 1 FROM calls WHERE call_id = ?", (call_id,)).fetchone() is None:
                return False
            db.execute("""INSERT INTO reviews (call_id, reviewer, verdict, notes, adherence_score,
                                               updated_at) VALUES (?, ?, ?, ?, ?, ?)
                          ON CONFLICT (call_id, reviewer) DO UPDATE SET verdict = excluded.verdict,
                              notes = excluded.notes, adherence_score = excluded.adherence_score,
                              updated_at = excluded.updated_at""",
                       (call_id, reviewer, verdict, notes, adherence_score, time.time()))
        return True

    # --- retention ------------------------------------------------------------------

    def purge(self, retention_days: float, now: float | None = None) -> int:
        """Delete ended calls that started more than `retention_days` ago, with all their
        rows and their recording files (only files inside data_dir/recordings are ever
        deleted). 0 keeps everything. Also drops expired sessions and old login
        attempts. Returns the number of calls deleted."""
        now = time.time() if now is None else now
        self.accounts.purge(now, AUDIT_RETENTION_DAYS)
        if retention_days <= 0:
            return 0
        cutoff = now - retention_days * 86400
        deleted = 0
        while True:
            # in batches: each transaction (and the lock it holds) stays short
            with self._write() as db:
                rows = db.execute("SELECT call_id, recording_path FROM calls WHERE status = 'ended' "
                                  "AND started_at < ? LIMIT ?", (cutoff, PURGE_BATCH)).fetchall()
                ids = json.dumps([r["call_id"] for r in rows])
                db.execute("DELETE FROM events WHERE call_id IN (SELECT value FROM json_each(?))", (ids,))
                db.execute("DELETE FROM calls WHERE call_id IN (SELECT value FROM json_each(?))", (ids,))
            for row in rows:
                self._delete_recording(row["recording_path"])
            deleted += len(rows)
            if len(rows) < PURGE_BATCH:
                break
        if deleted:
            log.info("retention: deleted %d calls older than %s days", deleted, retention_days)
        return deleted

    def _in_recordings(self, recording: str | None) -> Path | None:
        """The file a calls.recording_path names (relative paths are relative to the
        data dir), if it lies inside data_dir/recordings once symlinks and .. are resolved."""
        if not recording:
            return None
        path = Path(recording)
        if not path.is_absolute():
            path = self.path.parent / path
        try:
            resolved = path.resolve()
            inside = resolved.is_relative_to(self.recordings_dir.resolve())
        except (OSError, RuntimeError):
            return None
        return resolved if inside else None

    def recording_file(self, recording: str | None) -> Path | None:
        """For serving a call's recording: the existing file inside data_dir/recordings
        that `recording` (calls.recording_path) names, else None. Never a path outside."""
        path = self._in_recordings(recording)
        return path if path is not None and path.is_file() else None

    def _delete_recording(self, recording: str | None) -> None:
        if not recording:
            return
        path = self._in_recordings(recording)
        if path is None:
            log.warning("retention: not deleting %s: outside %s", recording, self.recordings_dir)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("retention: cannot delete %s: %s", path, exc)


def open_store(config: Config, *, create: bool = True) -> Store:
    """The store of a configuration: data_dir/callassist.db (data_dir and its recordings
    folder are created, readable by the owner only). With create=False (commands that
    only read or change what is there) nothing is created: no database is an error that
    names the directory, so a command run in the wrong place never leaves folders behind."""
    data_dir = config.data_dir
    if not create and not (data_dir / DB_NAME).is_file():
        raise StoreError(f"no callassist database in {data_dir} (nothing stored there yet; the data "
                         f"directory is [storage] data_dir or $CALLASSIST_STORAGE_DATA_DIR; "
                         f"`callassist user add` creates it)")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (data_dir / RECORDINGS_DIR).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    return Store(data_dir / DB_NAME)
