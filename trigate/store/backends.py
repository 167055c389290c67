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


class Refused(Exception):
    """The database refuses a value a statement was given: past its column's range, not
    in its encoding, or breaking a constraint. The data's fault, neither an outage nor a
    fault of the statement: the same values are refused at every try. The message names
    only the driver's error class and code (SQLSTATE, or SQLite's result code), never
    the values (PostgreSQL's message and detail quote them, and a client's may be a
    secret)."""

    def __init__(self, error: BaseException) -> None:
        # psycopg's SQLSTATE, or the name of SQLite's extended result code; Python's own
        # errors (a number past 64 bits, text with no encoding) have neither.
        code = getattr(error, "sqlstate", None) or getattr(error, "sqlite_errorname", None)
        super().__init__(f"{type(error).__name__} {code}" if code else type(error).__name__)


class Conflict(Refused):
    """A write would break a uniqueness rule (a key alias taken, a primary key reused):
    the caller's input, not a failure of the store."""


# What sqlite3 raises for a value the database refuses (a constraint, a value too big)
# or cannot be handed at all: an integer past 64 bits, text with a lone surrogate,
# which has no UTF-8. Raised by the driver's call only: the same Python errors raised
# elsewhere are bugs of ours. (A value of a type it does not bind is a ProgrammingError,
# as is a wrong count of parameters: a bug of the statement's caller.)
_SQLITE_REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeEncodeError)


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
            raise Conflict(error) from None
        except _SQLITE_REFUSALS as error:
            raise Refused(error) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            cursor = self._connection.execute(sql, params)
        except _SQLITE_REFUSALS as error:
            raise Refused(error) from None
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
        self._run(sql, params, Conflict)
        return int(self._cursor.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._run(sql, params, Refused)
        return list(self._cursor.fetchall())

    def _run(self, sql: str, params: Sequence[Any], unique: type[Refused]) -> None:
        """Run a statement; a value refused is a `Refused` (`unique` for a uniqueness
        rule broken, SQLSTATE 23505): a DataError (class 22: out of range, too long, not
        of the column's type; or text with a NUL, which psycopg refuses itself), an
        IntegrityError (class 23: a constraint), a value past a limit of the server's
        (SQLSTATE 54000: a text too long for an index entry, 2,704 bytes; psycopg files it
        under OperationalError, which would make it an outage, at every retry), or text
        with a lone surrogate, which has no UTF-8. Not a ProgrammingError: its SQLSTATEs
        (class 42 and the like) say the statement or schema is wrong, for every row alike,
        and psycopg's own (a type it cannot adapt, a wrong count of parameters) are bugs
        of the caller's."""
        from psycopg import DataError, IntegrityError
        from psycopg.errors import ProgramLimitExceeded

        try:
            self._cursor.execute(sql.replace("?", "%s"), params)
        except (DataError, IntegrityError, ProgramLimitExceeded, UnicodeEncodeError) as error:
            refusal = unique if getattr(error, "sqlstate", None) == "23505" else Refused
            raise refusal(error) from None


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
        from psycopg.errors import ReadOnlySqlTransaction

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
        except ReadOnlySqlTransaction:
            # SQLSTATE 25006, an InternalError: a write reached a standby, as after a
            # failover while the pool still holds connections to the old primary. The
            # pool's connections are replaced (those in use once returned), to reach
            # whichever server the URL names now; this call alone fails, a 503. Not a
            # lasting outage: reads are served meanwhile, and a write retried on a new
            # connection reaches the new primary.
            self._pool.drain()
            raise Unavailable("PostgreSQL: ReadOnlySqlTransaction", lasting=False) from None

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
