"""The store: calls, their events, transcripts, prompt cards, QA reviews, web accounts
and analytics, in one database behind one interface, on either engine:

- SQLite (default, [storage] database_url empty): data_dir/callassist.db
  (agent_ui.db_sqlite), for one machine;
- PostgreSQL ([storage] database_url = "postgresql://..."): shared by every node
  (agent_ui.db_postgres), with the live feed across processes (LISTEN/NOTIFY).

`open_store(config)` picks the engine. A Store is made of parts with one concern each,
all on the same engine:

    store.events      event log + live feed   (agent_ui.event_store.EventLog)
    store.calls       call archive queries    (agent_ui.archive_store.CallArchive)
    store.reviews     card actions, reviews   (agent_ui.review_store.CardReviews)
    store.retention   retention purge         (agent_ui.retention_store.Retention)
    store.recordings  recording files         (agent_ui.recordings_store.Recordings)
    store.recovery    calls a crash left live (agent_ui.recovery_store.CallRecovery)
    store.accounts    users, sessions, audit  (agent_ui.account_store.AccountStore)
    store.analytics   per-call analytics      (agent_ui.analytics_store.AnalyticsStore)
    store.trends      trends page queries     (agent_ui.trends_store.TrendStore)

The Store's own methods (record, listen, list_calls, purge ...) are shortcuts to the
parts, so callers written before the split keep working.

Nothing on the event loop (RTP, ARI, websockets) waits for the database: reads are
short; writes asked for by requests go through `await store.off_loop(fn, ...)` (one
worker thread), the bus is recorded by the writer thread (`store.run(bus)`,
agent_ui.store_writer). How `listen()` and `events_since` fit together: agent_ui.event_store.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_ui.account_store import AccountStore
from agent_ui.analytics_store import AnalyticsStore
from agent_ui.archive_store import CALL_STATUSES, FTS_MIN_CHARS, SEVERITY_RANK, CallArchive, search_form
from agent_ui.db import Connection, Database, StoreError
from agent_ui.db_sqlite import SqliteDatabase
from agent_ui.event_store import EventLog, Listener
from agent_ui.recordings_store import RECORDINGS_DIR, Recordings
from agent_ui.recovery_store import CallRecovery, RecordingRecovery
from agent_ui.retention_store import AUDIT_RETENTION_DAYS, PURGE_BATCH, Retention
from agent_ui.review_store import CardReviews
from agent_ui.store_writer import StoreWriter
from agent_ui.trends_store import TrendStore
from callassist.events import CallEvent

if TYPE_CHECKING:
    from callassist.bus import EventBus
    from callassist.config import Config

__all__ = ["AUDIT_RETENTION_DAYS", "CALL_STATUSES", "DB_NAME", "FTS_MIN_CHARS", "PURGE_BATCH",
           "RECORDINGS_DIR", "SEVERITY_RANK", "Listener", "RecordingRecovery", "Store", "StoreError",
           "open_store", "search_form"]

DB_NAME = "callassist.db"


class Store:
    """Store(path) opens (creating, migrating) the SQLite file `path`; Store(database,
    recordings_dir=...) uses an engine already open (PostgresDatabase). Recordings are in
    `recordings_dir`, by default the folder `recordings` beside the SQLite file."""

    def __init__(self, location: str | os.PathLike | Database, *, busy_timeout: float = 5.0,
                 recordings_dir: Path | None = None) -> None:
        if isinstance(location, Database):
            self.db = location
            if recordings_dir is None:
                raise StoreError(f"{location.location}: a recordings folder is needed")
            self.path = recordings_dir.parent / DB_NAME
        else:
            self.db = SqliteDatabase(location, busy_timeout=busy_timeout)
            self.path = Path(location)
        self.recordings_dir = recordings_dir or self.path.parent / RECORDINGS_DIR
        self._request_writes: ThreadPoolExecutor | None = None
        self.events = EventLog(self.db, self.path.name)
        self.calls = CallArchive(self.db)
        self.reviews = CardReviews(self.db)
        self.recordings = Recordings(self.recordings_dir)
        self.accounts = AccountStore(self.db)
        self.analytics = AnalyticsStore(self.db)
        self.trends = TrendStore(self.db)
        self.retention = Retention(self.db, self.accounts, self.recordings)
        self.recovery = CallRecovery(self.db, self.events, self.recordings)

    @property
    def engine(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.db.dialect.name

    @property
    def schema_version(self) -> int:
        return self.db.schema_version

    def writable(self) -> bool:
        """For health checks (blocking: call it off the loop)."""
        return self.db.writable()

    async def off_loop(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` (a store or part method that writes) on the one
        thread for request writes, so a request handler never stalls the event loop
        while another process holds the database; its default-pool neighbours are not
        starved either."""
        if self._request_writes is None:
            self._request_writes = ThreadPoolExecutor(1, thread_name_prefix="store-request-writes")
        return await asyncio.get_running_loop().run_in_executor(
            self._request_writes, lambda: method(*args, **kwargs))

    def close(self) -> None:
        """Store what the bus recorder still holds (StoreWriter.close), then close."""
        self.events.close()
        if self._request_writes is not None:
            self._request_writes.shutdown(wait=True)
            self._request_writes = None
        self.db.optimize()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- shortcuts: the event log and live feed (store.events) --------------------------

    def record(self, event: CallEvent) -> int:
        return self.events.record(event)

    def record_many(self, events: Sequence[CallEvent],
                    origins: Sequence[str | None] | None = None) -> list[int]:
        return self.events.record_many(events, origins)

    def record_batch(self, conn: Connection, events: Sequence[CallEvent],
                     origins: Sequence[str | None] | None = None) -> list[int]:
        return self.events.record_batch(conn, events, origins)

    def run(self, bus: EventBus) -> Coroutine[Any, Any, None]:
        return self.events.run(bus)

    def recorder(self) -> StoreWriter:
        return self.events.recorder()

    @property
    def recorder_backlog(self) -> int:
        return self.events.recorder_backlog

    def listen(self, maxsize: int = 0) -> Listener:
        return self.events.listen(maxsize)

    def unlisten(self, queue: asyncio.Queue) -> None:
        self.events.unlisten(queue)

    def events_since(self, after_seq: int, call_ids: Iterable[str] | None = None,
                     limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        return self.events.events_since(after_seq, call_ids, limit)

    def last_seq(self) -> int:
        return self.events.last_seq()

    # --- shortcuts: the call archive (store.calls) ----------------------------------------

    def list_calls(self, *, endpoints: list[str] | None = None, date_from: float | None = None,
                   date_to: float | None = None, category: str | None = None,
                   severity: str | None = None, agent: str | None = None, text: str | None = None,
                   status: str | None = None, risk: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[dict[str, Any]]:
        return self.calls.list_calls(endpoints=endpoints, date_from=date_from, date_to=date_to,
                                     category=category, severity=severity, agent=agent, text=text,
                                     status=status, risk=risk, limit=limit, offset=offset)

    def count_calls(self, **filters: Any) -> int:
        return self.calls.count_calls(**filters)

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        return self.calls.get_call(call_id)

    def live_calls(self) -> list[dict[str, Any]]:
        return self.calls.live_calls()

    def card_call_id(self, card_id: str) -> str | None:
        return self.calls.card_call_id(card_id)

    def get_card(self, card_id: str) -> dict[str, Any] | None:
        return self.calls.get_card(card_id)

    # --- shortcuts: card actions and reviews (store.reviews) -----------------------------

    def acknowledge_card(self, card_id: str, username: str, at: float | None = None) -> bool:
        return self.reviews.acknowledge_card(card_id, username, at)

    def card_feedback(self, card_id: str, username: str, helpful: bool, at: float | None = None) -> bool:
        return self.reviews.card_feedback(card_id, username, helpful, at)

    def save_review(self, call_id: str, reviewer: str, verdict: str, notes: str = "",
                    adherence_score: float | None = None) -> bool:
        return self.reviews.save_review(call_id, reviewer, verdict, notes, adherence_score)

    # --- shortcuts: retention, recordings, crash recovery --------------------------------

    def purge(self, retention_days: float, now: float | None = None) -> int:
        return self.retention.purge(retention_days, now)

    def recording_file(self, recording: str | None) -> Path | None:
        return self.recordings.file(recording)

    def interrupted_calls(self) -> list[dict[str, Any]]:
        return self.recovery.interrupted_calls()

    def close_interrupted_calls(self, now: float | None = None,
                                problem: str = "callassist restarted during the call", *,
                                recover: RecordingRecovery | None = None,
                                call_ids: Collection[str] | None = None) -> int:
        return self.recovery.close_interrupted_calls(now, problem, recover=recover, call_ids=call_ids)


def open_store(config: Config, *, create: bool = True) -> Store:
    """The store of a configuration. [storage] database_url set: that PostgreSQL database
    (migrated on open), recordings in data_dir/recordings (on several nodes, a folder
    shared by all at the same path). Otherwise data_dir/callassist.db (data_dir and its
    recordings folder are created, readable by the owner only). With create=False
    (commands that only read or change what is there) nothing is created: no SQLite
    database is an error that names the directory, so a command run in the wrong place
    never leaves folders behind."""
    data_dir = config.data_dir
    url = config.storage.database_url
    if not url and not create and not (data_dir / DB_NAME).is_file():
        raise StoreError(f"no callassist database in {data_dir} (nothing stored there yet; the data "
                         f"directory is [storage] data_dir or $CALLASSIST_STORAGE_DATA_DIR; "
                         f"`callassist user add` creates it)")
    if create or not url:                 # an existing SQLite data dir gets its recordings folder
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (data_dir / RECORDINGS_DIR).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if url:
        from agent_ui.db_postgres import PostgresDatabase   # psycopg only when configured
        return Store(PostgresDatabase(url), recordings_dir=data_dir / RECORDINGS_DIR)
    return Store(data_dir / DB_NAME)
