"""The embedded engine: one SQLite file, the default.

WAL mode lets ``status`` and ``clients`` read while the service and a storm write; every
write is a short ``BEGIN IMMEDIATE`` transaction, so two writers queue on the busy
timeout instead of failing when a read would have to be upgraded to a write.
``synchronous=FULL``: a commit is on disk before it returns, because the collector acks
the broker right after committing; with NORMAL a power cut could drop batches the broker
had already been told were safe. A connection that is not ``durable`` (a storm's writer)
takes NORMAL: its commits skip the flush that would compete with the broker's own, and
still survive the process dying.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dispatcher.store.engine import (
    Cursor,
    DbSettings,
    Dialect,
    Params,
    StoreError,
    store_error,
)

DIALECT = Dialect(
    name="sqlite",
    insert_order="rowid",
    row_numbers=True,
    tail="substr({text}, -{n})",
    json_flag="json_extract({column}, '$.{key}')",
)


def _error(exc: sqlite3.Error) -> StoreError:
    return store_error(exc, sqlite3.OperationalError, sqlite3.IntegrityError)


class SqliteConnection:
    dialect = DIALECT

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._c = connection

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            return self._c.execute(sql, params)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            self._c.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        marks = ",".join("?" * len(columns))
        self.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})", rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._c.close()


def connect(settings: DbSettings, *, read_only: bool = False) -> SqliteConnection:
    if read_only:
        target, uri = f"file:{settings.path}?mode=ro", True
    else:
        Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
        target, uri = settings.path, False
    try:
        # check_same_thread=False: a store may be opened on one thread and used on another
        # (the collector's); it is never used by two threads at once.
        connection = sqlite3.connect(
            target,
            timeout=settings.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=uri,
        )
    except sqlite3.Error as exc:
        raise _error(exc) from exc
    opened = SqliteConnection(connection)
    if read_only:
        return opened
    try:
        opened.execute("PRAGMA journal_mode=WAL")
        opened.execute(f"PRAGMA synchronous={'FULL' if settings.durable else 'NORMAL'}")
    except BaseException:
        opened.close()
        raise
    return opened
