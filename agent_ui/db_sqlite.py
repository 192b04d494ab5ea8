"""The SQLite engine: one file (data_dir/callassist.db) in WAL mode, so the web app keeps
serving reads while the store writes, and `callassist user ...` / `archive import` can
write from another process. Schema: agent_ui.migrations, applied in order on open
(`PRAGMA user_version` is the schema version).

Three kinds of connection, so that nothing on the event loop waits for another process
holding the write lock (WAL readers never wait for writers): reads (short, fine on the
loop), request writes (`write()`: from the loop only through Store.off_loop) and the bus
recorder's own (agent_ui.store_writer). BEGIN IMMEDIATE takes the write lock up front,
so a concurrent writer waits (busy_timeout) instead of failing on lock upgrade; only one
write transaction runs at a time, so seq order is commit order.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_ui.db import SQLITE, Database, StoreError
from agent_ui.migrations import MIGRATIONS

log = logging.getLogger(__name__)

RECORDER_BUSY_TIMEOUT = 0.1            # the bus recorder retries itself (StoreWriter)


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class SqliteDatabase(Database):
    dialect = SQLITE
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()             # the read connection
        self._write_lock = threading.RLock()       # the request/command write connection
        self._closed = False
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

    @property
    def location(self) -> str:
        return str(self.path)

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

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    @contextmanager
    def write_connection(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            yield self._write_db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")

    @contextmanager
    def query(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def recorder_connection(self) -> sqlite3.Connection:
        return self._connect(RECORDER_BUSY_TIMEOUT, same_thread=True)

    def announce(self, conn: sqlite3.Connection, last_seq: int) -> None:
        return None                  # one process: the committing store tells its listeners

    def retry_later(self, exc: BaseException) -> bool:
        return is_lock_error(exc)

    def writable(self) -> bool:
        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)

    @property
    def schema_version(self) -> int:
        with self._lock:
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
                with self.write() as db:
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

    def optimize(self) -> None:
        with self._write_lock:
            try:
                self._write_db.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        with self._write_lock, self._lock:
            self._close_connections()
