"""The dispatcher's embedded database: one SQLite file for the fleet registry and the ledger.

WAL mode lets ``status`` and ``clients`` read while the service and a storm write; every
write is a short ``BEGIN IMMEDIATE`` transaction, so two writers queue on the busy
timeout instead of failing when a read would have to be upgraded to a write.
``synchronous=FULL``: a commit is on disk before it returns, because the collector acks
the broker right after committing; with NORMAL a power cut could drop batches the broker
had already been told were safe.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DB_ENV = "SETEVNT_DB"
DEFAULT_DB = "setevnt.db"


class DatabaseMissing(ValueError):
    """Reading a database that does not exist (yet): say where it was looked for."""


@dataclass(frozen=True, slots=True)
class DbSettings:
    path: str = DEFAULT_DB
    busy_timeout: float = 15.0

    @classmethod
    def from_env(cls, path: str | None = None) -> DbSettings:
        """An explicit path, else ``$SETEVNT_DB``, else ``./setevnt.db``."""
        return cls(path=path or os.environ.get(DB_ENV) or DEFAULT_DB)

    @property
    def exists(self) -> bool:
        return Path(self.path).exists()


def connect(settings: DbSettings, *, create: bool = True) -> sqlite3.Connection:
    """Open the database (autocommit; use :func:`transaction` to write)."""
    if not create and not settings.exists:
        raise DatabaseMissing(
            f"no setevnt database at {settings.path}: start `setevnt-dispatcher serve` "
            f"there, or point --db / ${DB_ENV} at its database"
        )
    if create:
        Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: a store may be opened on one thread and used on another
    # (the collector's); it is never used by two threads at once.
    connection = sqlite3.connect(
        settings.path,
        timeout=settings.busy_timeout,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
    except BaseException:
        connection.close()
        raise
    return connection


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def ensure_schema(connection: sqlite3.Connection, schema: str) -> None:
    """Create missing tables and indexes (every statement is IF NOT EXISTS)."""
    with transaction(connection):
        for statement in schema.split(";"):
            if statement.strip():
                connection.execute(statement)


def add_columns(connection: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add columns a newer release needs to a table an older one created (``CREATE TABLE
    IF NOT EXISTS`` leaves an existing table as it was)."""
    with transaction(connection):
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def open_store(settings: DbSettings, schema: str, *, create: bool = True) -> sqlite3.Connection:
    """Connect and make sure ``schema`` exists; the connection is closed if that fails."""
    connection = connect(settings, create=create)
    try:
        ensure_schema(connection, schema)
    except BaseException:
        connection.close()
        raise
    return connection


def chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Slices small enough for an ``IN (?, ...)`` list on any SQLite build."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
