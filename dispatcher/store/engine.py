"""What every engine of the dispatcher's database is: settings, connection, errors, dialect.

Kept apart from :mod:`dispatcher.store.db` (which picks the engine) so that the engines
and the migrations depend on it and not on each other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

DB_ENV = "SETEVNT_DB"
DEFAULT_DB = "setevnt.db"
_URL_SCHEMES = ("postgresql://", "postgres://")

Params = Sequence[Any] | Mapping[str, Any]


class DatabaseMissing(ValueError):
    """Reading a database that does not exist (yet): say where it was looked for."""


class StoreError(Exception):
    """The database refused or failed a statement."""


class StoreUnavailable(StoreError):
    """Locked or busy past the timeout, full, or unreachable: the same work may succeed
    later."""


class StoreConflict(StoreError):
    """A row with the same key exists: another writer got there first."""


def store_error(
    exc: Exception, unavailable: type[Exception], conflict: type[Exception]
) -> StoreError:
    """A driver's error as the store's: its ``unavailable`` class (locked, busy, full,
    unreachable: the same statement may work later) and its ``conflict`` class (a key
    constraint) get their own kinds, anything else is a plain :class:`StoreError`."""
    if isinstance(exc, unavailable):
        return StoreUnavailable(str(exc))
    if isinstance(exc, conflict):
        return StoreConflict(str(exc))
    return StoreError(str(exc))


@dataclass(frozen=True, slots=True)
class DbSettings:
    """A file path (SQLite) or a ``postgresql://`` URL (PostgreSQL)."""

    path: str = DEFAULT_DB
    busy_timeout: float = 15.0
    # False: a commit may return before it is flushed to disk. Never lost when the process
    # dies, only when the machine does; for writes a later run can make again (a storm's
    # sent marks), never for what the broker was told is safe (the collector's acks).
    durable: bool = True

    @classmethod
    def from_env(cls, path: str | None = None) -> DbSettings:
        """An explicit path or URL, else ``$SETEVNT_DB``, else ``./setevnt.db``."""
        return cls(path=path or os.environ.get(DB_ENV) or DEFAULT_DB)

    @property
    def is_postgres(self) -> bool:
        return self.path.startswith(_URL_SCHEMES)

    @property
    def exists(self) -> bool:
        """A server's database is the operator's to create: it is taken to exist."""
        return self.is_postgres or Path(self.path).exists()

    def __str__(self) -> str:
        """Where the database is, with any password in the URL left out."""
        if not self.is_postgres or "@" not in self.path:
            return self.path
        scheme, rest = self.path.split("://", 1)
        user, host = rest.rsplit("@", 1)
        return f"{scheme}://{user.split(':', 1)[0]}@{host}"


class Cursor(Protocol):
    """What a statement gives back (both drivers' cursors are this)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """The SQL fragments that differ between the engines."""

    name: str
    # A column that orders a table's rows as they were inserted.
    insert_order: str
    # Marks may address a command by its row number instead of its key (SQLite's rowid).
    row_numbers: bool
    # ``{text}``: an expression; the fragment keeps its last ``{n}`` characters.
    tail: str
    # ``{column}`` holds a JSON object; the fragment is true when its ``{key}`` is true.
    json_flag: str

    def tail_of(self, expression: str, n: int) -> str:
        return self.tail.format(text=expression, n=n)

    def flag(self, column: str, key: str) -> str:
        return self.json_flag.format(column=column, key=key)


class Connection(Protocol):
    """One connection, used by one thread at a time, in autocommit outside
    :meth:`transaction`."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Insert many new rows the fastest way the engine has (inside a transaction)."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction: taken before the first statement (SQLite's ``BEGIN
        IMMEDIATE``), so writers queue instead of failing on an upgrade to a write."""
        ...

    def has_table(self, name: str) -> bool: ...

    def close(self) -> None: ...
