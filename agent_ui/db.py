"""What the store's parts need from a database engine, whichever it is.

Two engines implement `Database`: agent_ui.db_sqlite.SqliteDatabase (one file in the data
directory, the default) and agent_ui.db_postgres.PostgresDatabase (a shared PostgreSQL,
[storage] database_url). The parts of the store (agent_ui.event_store, archive_store, ...)
write their SQL once, with `?` placeholders and the few differences spelled by the
engine's `Dialect`; rows behave like sqlite3.Row on both (index, name, dict(row), and
iterating gives the values).

Connections, each used under its own lock or by one thread only:
- reads: `read()` (one snapshot) and `query()` (one statement); short, fine on the loop;
- request writes: `write()`, one transaction; on the event loop only through
  Store.off_loop (it may wait for another writer);
- the bus recorder's thread: `recorder_connection()` + `transaction(conn)`.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


class StoreError(ValueError):
    """A request the database cannot satisfy; the message says why."""


class Row(tuple):
    """A result row like sqlite3.Row: row[0], row["name"], dict(row), and iteration over
    the values (so `for (name,) in rows` unpacks on both engines)."""

    _names: tuple[str, ...]

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a connection the store's SQL uses (sqlite3.Connection, PgConnection)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between the engines; everything else is written once."""
    name: str                   # "sqlite" | "postgresql"
    least: str                  # the two-argument minimum: MIN (SQLite) | LEAST
    contains: str               # "{haystack} contains {needle}" as SQL, .format()ted
    json_array: str             # rows of a JSON array parameter (one column), .format(cast=)
    rowid: str                  # the implicit row id of login_attempts
    table_exists: str           # one row if the table named by the parameter exists

    def json_values(self, cast: str = "") -> str:
        """`SELECT` of the values of a JSON array given as one parameter (json.dumps(list)),
        for `x IN (...)`; cast: e.g. "bigint" for integer ids."""
        return self.json_array.format(cast=f"::{cast}" if cast and self.name != "sqlite" else "")

    def json_field(self, column: str, *path: str, integer: bool = False) -> str:
        """A field of a JSON text column, as text (or as an integer)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{'.'.join(path)}')"
        field = f"({column}::json #>> '{{{','.join(path)}}}')"
        return f"{field}::bigint" if integer else field


SQLITE = Dialect(
    name="sqlite", least="MIN", contains="instr({0}, {1}) > 0",
    json_array="SELECT value FROM json_each(?)", rowid="rowid",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")

POSTGRESQL = Dialect(
    name="postgresql", least="LEAST", contains="strpos({0}, {1}) > 0",
    json_array="SELECT json_array_elements_text(?::json){cast}", rowid="id",
    table_exists="SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?")


class Database(abc.ABC):
    """One engine: its connections, transactions, schema and dialect."""

    dialect: Dialect
    # what a failing INSERT of a duplicate/dangling key raises
    integrity_errors: tuple[type[Exception], ...]

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """For messages: the file, or the server and database (no password)."""

    @property
    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Any]:
        """The read connection holding one snapshot for several SELECTs."""

    @abc.abstractmethod
    def query(self) -> AbstractContextManager[Any]:
        """The read connection for one statement (no transaction)."""

    @abc.abstractmethod
    def write_connection(self) -> AbstractContextManager[Any]:
        """The request-writes connection, held (locked) for this thread, no transaction."""

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One write transaction on the request-writes connection."""
        with self.write_connection() as conn, self.transaction(conn) as db:
            yield db

    @abc.abstractmethod
    def recorder_connection(self) -> Any:
        """A new connection for the bus recorder's thread (used by that thread only)."""

    @abc.abstractmethod
    def transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """One write transaction on `conn`; write transactions never interleave their
        events (seq order is commit order)."""

    @abc.abstractmethod
    def announce(self, conn: Any, last_seq: int) -> None:
        """Inside the transaction that recorded events up to `last_seq`: tell other
        processes once it commits (PostgreSQL NOTIFY; nothing for SQLite)."""

    @abc.abstractmethod
    def retry_later(self, exc: BaseException) -> bool:
        """Whether a failed write is worth retrying as is (a lock held elsewhere, the
        server restarting) rather than a bad event."""

    @property
    def shared(self) -> bool:
        """Other processes' commits reach this store's listeners through the database
        (PostgreSQL), rather than each commit telling local listeners directly."""
        return False

    def follow(self, after_seq: int, fetch: FetchEvents,
               deliver: Callable[[list[tuple[int, dict[str, Any]]]], None]) -> Any:
        """Start handing every event committed with seq > after_seq, by any process, to
        `deliver` in seq order (shared engines only); returns what `close()` stops."""
        raise NotImplementedError

    @abc.abstractmethod
    def writable(self) -> bool:
        """For health checks: can the store write now?"""

    def optimize(self) -> None:
        """Housekeeping at a clean close."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...


# (connection, after seq, limit) -> [(seq, event dict)] oldest first
FetchEvents = Callable[[Any, int, int], list[tuple[int, dict[str, Any]]]]
