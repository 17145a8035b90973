"""The dispatcher's database: one setting chooses SQLite (a path) or PostgreSQL (a URL).

Every store module talks to a :class:`Connection`, never to a driver: SQL is written
with ``?`` and ``:name`` parameters, in the dialect both engines share (``INSERT ... ON
CONFLICT``, ``RETURNING``, no ``rowid``), and what differs lives in :class:`Dialect`.
The drivers sit in :mod:`dispatcher.store.sqlite` (embedded, the default) and
:mod:`dispatcher.store.postgres` (psycopg, imported only when a ``postgresql://`` URL
is given, so an install without the ``postgres`` extra never needs it). Their errors
come out as :class:`StoreError`, which service code catches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

from dispatcher.store import migrations, postgres, sqlite
from dispatcher.store.engine import (
    DB_ENV,
    DEFAULT_DB,
    Connection,
    Cursor,
    DatabaseMissing,
    DbSettings,
    Dialect,
    Params,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "Connection",
    "Cursor",
    "DatabaseMissing",
    "DbSettings",
    "Dialect",
    "Params",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "chunks",
    "connect",
    "open_store",
    "transaction",
]

T = TypeVar("T")


def connect(settings: DbSettings, *, create: bool = True, read_only: bool = False) -> Connection:
    """Open the database (autocommit; use :func:`transaction` to write)."""
    if settings.is_postgres:
        return postgres.connect(settings, read_only=read_only)
    if (read_only or not create) and not settings.exists:
        raise DatabaseMissing(
            f"no setevnt database at {settings.path}: start `setevnt-dispatcher serve` "
            f"there, or point --db / ${DB_ENV} at its database"
        )
    return sqlite.connect(settings, read_only=read_only)


def transaction(connection: Connection) -> contextlib.AbstractContextManager[None]:
    return connection.transaction()


def open_store(settings: DbSettings, *, create: bool = True) -> Connection:
    """Connect and bring the schema up to date; the connection is closed if that fails."""
    connection = connect(settings, create=create)
    try:
        migrations.migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def chunks(items: list[T], size: int = 500) -> Iterator[list[T]]:
    """Slices small enough for an ``IN (?, ...)`` list on any SQLite build."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
