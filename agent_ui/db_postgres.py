"""The PostgreSQL engine ([storage] database_url): one database shared by every node.

Same shape as the SQLite engine (agent_ui.db_sqlite): a read connection, a request-writes
connection and the bus recorder's own, each psycopg 3 sync connection used by one thread
at a time (never on the event loop: reads are short, writes go through Store.off_loop or
the recorder's thread). The store's SQL is written with `?` placeholders; PgConnection
turns them into psycopg's `%s`.

Why the writes are serialised by an advisory lock: every write transaction first takes
pg_advisory_xact_lock(WRITE_LOCK), as SQLite's BEGIN IMMEDIATE does. Events get their
seq inside it, so seq order is commit order across processes (a follower that has read
every seq <= n never sees a smaller one commit later), and the check-then-insert
transactions (login attempts, the last admin) keep SQLite's meaning.

The live feed across processes: a transaction that records events ends with
NOTIFY callassist_events '<last seq>' (delivered at commit). Each store that has
listeners runs an EventFollower thread: its own connection, LISTEN, and on each
notification (and after every reconnect) it reads events_since(last delivered) and
hands them to the listeners in seq order; so a web node that writes nothing still sees
every committed event once, in order.

A restart of the server: connections are opened again lazily. A statement that starts
a transaction (or runs alone) is retried once on a fresh connection, so reads survive a
restart unnoticed; the recorder's thread retries its batch with backoff (retry_later);
the follower reconnects with backoff and catches up from its last seq.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus

from agent_ui.db import POSTGRESQL, Database, FetchEvents, Row, StoreError
from agent_ui.migrations import Migration
from agent_ui.migrations.postgres import PG_MIGRATIONS

log = logging.getLogger(__name__)

CHANNEL = "callassist_events"
WRITE_LOCK = 0x63616C6C_01           # pg_advisory_xact_lock keys ("call" + n)
MIGRATION_LOCK = 0x63616C6C_02
CONNECT_TIMEOUT = 5                  # seconds: a dead server fails fast, then backoff
RETRY_FIRST = 0.05                   # follower reconnect backoff, doubling ...
RETRY_MAX = 1.0                      # ... up to this
NOTIFY_WAIT = 0.5                    # the follower checks for a stop this often
SAFETY_POLL = 10.0                   # ... and reads the log anyway this often
CATCH_UP_BATCH = 1000


@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """`?` placeholders -> psycopg's `%s` (a literal % doubled). The store's SQL has no
    `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = tuple(column.name for column in cursor.description or ())
    return lambda values: Row(values, names)


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a statement returns."""
    row = cursor.fetchone()
    assert row is not None
    return row[0]


def describe(url: str) -> str:
    """The url without its password, for messages."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PgConnection:
    """A psycopg connection (autocommit: transactions are explicit BEGIN/COMMIT, as on
    SQLite) with `?` placeholders, sqlite3.Row-like rows and lazy reconnection."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._conn: psycopg.Connection[Any] | None = None

    def raw(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                application_name=f"callassist {self._name}", row_factory=_row_factory)
        return conn

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        return (conn is not None and not conn.closed and not conn.broken
                and conn.info.transaction_status != TransactionStatus.IDLE)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        conn = self.raw()
        first = conn.info.transaction_status == TransactionStatus.IDLE
        try:
            return conn.execute(pg_sql(sql), tuple(parameters))
        except psycopg.OperationalError:
            # a statement outside any transaction (a BEGIN, a single read) on a connection the
            # server dropped (restart): nothing was done, so once more on a new connection
            if not (first and conn.broken):
                raise
        return self.raw().execute(pg_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cursor = self.raw().cursor()
        cursor.executemany(pg_sql(sql), [tuple(p) for p in parameters])
        return cursor

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresDatabase(Database):
    dialect = POSTGRESQL
    integrity_errors = (psycopg.IntegrityError,)

    def __init__(self, url: str, *, migrations: tuple[Migration, ...] = PG_MIGRATIONS) -> None:
        self.url = url
        self._where = describe(url)
        self._lock = threading.RLock()             # the read connection
        self._write_lock = threading.RLock()       # the request/command write connection
        self._reader = PgConnection(url, "reads")
        self._writer = PgConnection(url, "request writes")
        self._followers: list[EventFollower] = []
        self._closed = False
        try:
            self._reader.raw()
            self._migrate(migrations)
        except psycopg.OperationalError as exc:
            self.close()
            raise StoreError(f"{self._where}: cannot use the database: {exc}".strip()) from None
        except BaseException:
            self.close()
            raise

    @property
    def location(self) -> str:
        return self._where

    @property
    def shared(self) -> bool:
        return True

    # --- connections and transactions ---------------------------------------------------

    @contextmanager
    def transaction(self, conn: PgConnection) -> Iterator[PgConnection]:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            yield conn
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass                   # the connection is gone: so is the transaction
            raise
        else:
            conn.execute("COMMIT")

    @contextmanager
    def write_connection(self) -> Iterator[PgConnection]:
        with self._write_lock:
            yield self._writer

    @contextmanager
    def read(self) -> Iterator[PgConnection]:
        with self._lock:
            self._reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield self._reader
            finally:
                if self._reader.in_transaction:
                    self._reader.execute("COMMIT")

    @contextmanager
    def query(self) -> Iterator[PgConnection]:
        with self._lock:
            yield self._reader

    def recorder_connection(self) -> PgConnection:
        return PgConnection(self.url, "recorder")         # connects on first use

    def announce(self, conn: PgConnection, last_seq: int) -> None:
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(last_seq)))

    def retry_later(self, exc: BaseException) -> bool:
        # the server is restarting or unreachable (a dropped connection, "the database
        # system is shutting down", AdminShutdown, a refused connect ...)
        return isinstance(exc, psycopg.OperationalError)

    def writable(self) -> bool:
        try:
            with self.query() as db:
                return not _one(db.execute("SELECT pg_is_in_recovery()"))
        except psycopg.Error:
            return False

    # --- the live feed across processes ------------------------------------------------

    def follow(self, after_seq: int, fetch: FetchEvents,
               deliver: Callable[[list[tuple[int, dict[str, Any]]]], None]) -> EventFollower:
        follower = EventFollower(self.url, after_seq, fetch, deliver)
        self._followers.append(follower)
        return follower

    # --- schema ---------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        with self.query() as db:
            return int(_one(db.execute("SELECT max(version) FROM schema_version")) or 0)

    def _migrate(self, migrations: tuple[Migration, ...]) -> None:
        """Each step in its own transaction under an advisory lock: of several nodes
        starting at once, one migrates, the others wait and find it done."""
        latest = migrations[-1].version
        for step in migrations:
            with self.write_connection() as db:
                try:
                    db.execute("BEGIN")
                    db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                    current = int(_one(db.execute("SELECT max(version) FROM schema_version")) or 0)
                    if current > latest:
                        raise StoreError(f"{self._where}: schema version {current} is newer than "
                                         f"this callassist understands ({latest}); upgrade callassist")
                    if current >= step.version:
                        db.execute("COMMIT")
                        continue
                    if current != step.version - 1:
                        raise StoreError(f"{self._where}: schema version {current} cannot be "
                                         f"migrated to {step.version}")
                    for statement in step.statements:
                        db.execute(statement)
                    db.execute("DELETE FROM schema_version")
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (step.version,))
                    db.execute("COMMIT")
                except BaseException as exc:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.OperationalError):
                        raise StoreError(f"{self._where}: migration to schema {step.version} "
                                         f"({step.description}) failed, database left at schema "
                                         f"{self.schema_version}: {exc}") from None
                    raise
            log.info("database %s migrated to schema %d (%s)", self._where, step.version,
                     step.description)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        for follower in self._followers:
            follower.stop()
        self._followers.clear()
        with self._write_lock, self._lock:
            self._writer.close()
            self._reader.close()


class EventFollower:
    """A thread that LISTENs on CHANNEL and hands every event committed after `after_seq`
    to `deliver`, in seq order, exactly once, across reconnects."""

    def __init__(self, url: str, after_seq: int, fetch: FetchEvents,
                 deliver: Callable[[list[tuple[int, dict[str, Any]]]], None]) -> None:
        self._url = url
        self.last_seq = after_seq                 # the last one delivered
        self._fetch = fetch
        self._deliver = deliver
        self._stopping = threading.Event()
        self.connected = threading.Event()        # LISTENing (tests, health)
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="store-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        delay = RETRY_FIRST
        while not self._stopping.is_set():
            conn = PgConnection(self._url, "follower")
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                self.connected.set()
                delay = RETRY_FIRST
                self._catch_up(conn)              # what committed while not listening
                self._follow(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    break
                self.reconnects += 1
                log.warning("store follower: %s; reconnecting in %.2f s (events are caught up "
                            "from seq %d)", str(exc).strip() or type(exc).__name__, delay, self.last_seq)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception:
                log.exception("store follower failed; restarting it")
                self._stopping.wait(RETRY_MAX)
            finally:
                conn.close()

    def _follow(self, conn: PgConnection) -> None:
        raw = conn.raw()
        idle = 0.0
        while not self._stopping.is_set():
            woke = False
            for _ in raw.notifies(timeout=NOTIFY_WAIT, stop_after=1):
                woke = True
            idle = 0.0 if woke else idle + NOTIFY_WAIT
            if woke or idle >= SAFETY_POLL:
                idle = 0.0
                self._catch_up(conn)

    def _catch_up(self, conn: PgConnection) -> None:
        while True:
            rows = self._fetch(conn, self.last_seq, CATCH_UP_BATCH)
            if not rows:
                return
            self._deliver(rows)
            self.last_seq = rows[-1][0]
