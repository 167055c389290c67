"""Blocking database access for SQLite and PostgreSQL, behind one small interface.

Both backends run a function inside a transaction and hand it a cursor that
speaks `?` placeholders and returns rows as dicts. They are called only from
worker threads (see `trigate.store.Store`), never from the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")
# A row as the database gives it, column to value: the one definition, from `trigate.store`.
Row = dict[str, Any]


# How long a call waits for a PostgreSQL connection (from the pool, or a new one) before
# the database counts as unreachable: a store outage must answer fast, not hold callers.
CONNECT_WAIT = 2.0
# How long SQLite waits on another process's lock before the write counts as failed.
SQLITE_BUSY_TIMEOUT_MS = 2000
# SQLite's primary result codes that mean the database cannot be used now, rather than
# a bug in a statement: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 10, 13, 14})


class Unavailable(Exception):
    """The database cannot serve this call now (unreachable, locked, out of space): an
    outage to answer fast with a 503, never a bug of ours. `lasting` when it is likely
    to hold for the next calls too (a lost connection), not a moment's lock."""

    def __init__(self, message: str, *, lasting: bool) -> None:
        super().__init__(message)
        self.lasting = lasting


class Conflict(Exception):
    """A write would break a uniqueness rule (a key alias taken, a primary key reused):
    the caller's input, not a failure of the store."""


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class Backend(Protocol):
    dialect: str

    def transaction(self, work: Callable[[Cursor], T]) -> T: ...

    def read(self, work: Callable[[Cursor], T]) -> T:
        """Like `transaction`, for work that only reads."""

    def close(self) -> None: ...


class _SqliteCursor:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._connection.execute(sql, params).rowcount
        except sqlite3.IntegrityError as error:
            raise Conflict(str(error)) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._connection.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class SqliteBackend:
    """One connection, serialized by a lock: SQLite allows a single writer anyway."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        self._lock = threading.Lock()

    def transaction(self, work: Callable[[Cursor], T]) -> T:
        """IMMEDIATE takes the write lock up front, so a writer never fails half-way."""
        return self._run("BEGIN IMMEDIATE", work)

    def read(self, work: Callable[[Cursor], T]) -> T:
        """A deferred transaction: under WAL, a reader never waits on another writer."""
        return self._run("BEGIN", work)

    def _run(self, begin: str, work: Callable[[Cursor], T]) -> T:
        try:
            with self._lock:
                self._connection.execute(begin)
                try:
                    result = work(_SqliteCursor(self._connection))
                    self._connection.execute("COMMIT")
                except BaseException:
                    # A COMMIT that found the database locked leaves the transaction open.
                    if self._connection.in_transaction:
                        self._connection.execute("ROLLBACK")
                    raise
                return result
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF in _SQLITE_UNAVAILABLE:
                raise Unavailable(f"SQLite: {error}", lasting=False) from None
            raise

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class _PostgresCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        from psycopg.errors import UniqueViolation

        try:
            self._cursor.execute(sql.replace("?", "%s"), params)
        except UniqueViolation as error:
            raise Conflict(str(error)) from None
        return int(self._cursor.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(sql.replace("?", "%s"), params)
        return list(self._cursor.fetchall())


class PostgresBackend:
    """A bounded psycopg pool; each transaction borrows one connection."""

    dialect = "postgresql"

    def __init__(self, url: str, max_connections: int = 10) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"row_factory": dict_row, "connect_timeout": max(1, round(CONNECT_WAIT))},
            open=True,
            timeout=CONNECT_WAIT,
        )

    def transaction(self, work: Callable[[Cursor], T]) -> T:
        from psycopg import OperationalError

        try:
            with (
                self._pool.connection() as connection,
                connection.transaction(),
                connection.cursor() as cursor,
            ):
                return work(_PostgresCursor(cursor))
        except OperationalError as error:
            # Unreachable, lost, or no connection in time (no SQLSTATE, or class 08) is an
            # outage; a deadlock, serialization failure or cancelled statement is this
            # call's alone, and must not turn the worker's every call away.
            state = error.sqlstate
            lasting = state is None or state.startswith("08")
            raise Unavailable(f"PostgreSQL: {type(error).__name__}", lasting=lasting) from None

    def read(self, work: Callable[[Cursor], T]) -> T:
        return self.transaction(work)

    def close(self) -> None:
        self._pool.close()


def connect(url: str) -> Backend:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://:memory:`, or
    `postgresql://...` (also `postgres://`)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite://")
        return SqliteBackend(path[1:] if path.startswith("/") else path)
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url)
    raise ValueError(f"unsupported database URL scheme {scheme!r}; use sqlite:// or postgresql://")
