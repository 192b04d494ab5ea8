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

Callers use the part that does what they need (`store.calls.get_call(id)`,
`store.events.record_many(events)`, `store.retention.purge(days)` ...); the Store itself
only opens the engine, builds the parts, runs request writes off the loop and closes.

Nothing on the event loop (RTP, ARI, websockets) waits for the database: reads are
short; writes asked for by requests go through `await store.off_loop(fn, ...)` (one
worker thread), e.g. `await store.off_loop(store.reviews.save_review, ...)`; the bus is
recorded by the writer thread (`store.events.run(bus)`, agent_ui.store_writer). How
`store.events.listen()` and `events_since` fit together: agent_ui.event_store.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_ui.account_store import AccountStore
from agent_ui.analytics_store import AnalyticsStore
from agent_ui.archive_store import CALL_STATUSES, FTS_MIN_CHARS, SEVERITY_RANK, CallArchive, search_form
from agent_ui.db import Database, StoreError
from agent_ui.db_sqlite import SqliteDatabase
from agent_ui.event_store import EventLog, Listener
from agent_ui.recordings_store import RECORDINGS_DIR, Recordings
from agent_ui.recovery_store import CallRecovery, RecordingRecovery
from agent_ui.retention_store import AUDIT_RETENTION_DAYS, PURGE_BATCH, Retention
from agent_ui.review_store import CardReviews
from agent_ui.trends_store import TrendStore

if TYPE_CHECKING:
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
