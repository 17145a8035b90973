"""The server engine: PostgreSQL through psycopg 3, for several dispatchers on one database.

psycopg is imported when a ``postgresql://`` URL is opened, never before: it is the
optional ``postgres`` extra. The store's SQL is written with ``?`` and ``:name``
parameters; they become psycopg's ``%s`` and ``%(name)s`` here, once per statement text.
Planned rows go in by ``COPY``, the fastest way PostgreSQL takes new rows.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dispatcher.store.engine import (
    Cursor,
    DbSettings,
    Dialect,
    Params,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    import psycopg

DIALECT = Dialect(
    name="postgresql",
    insert_order="row_no",
    row_numbers=False,
    tail="right({text}, {n})",
    json_flag="coalesce(({column}::jsonb ->> '{key}')::boolean, false)",
)

# Quoted literals are copied as they are; parameters and % outside them are rewritten.
_TOKENS = re.compile(r"('(?:[^']|'')*')|(\?)|(?<!:):([A-Za-z_]\w*)|(%)")


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """``?`` -> ``%s``, ``:name`` -> ``%(name)s``, ``%`` -> ``%%`` (``::`` casts stay)."""

    def replace(match: re.Match[str]) -> str:
        quoted, mark, name, percent = match.groups()
        if quoted is not None:
            return quoted
        if mark is not None:
            return "%s"
        if name is not None:
            return f"%({name})s"
        assert percent is not None
        return "%%"

    return _TOKENS.sub(replace, sql)


def _error(exc: Exception) -> StoreError:
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(str(exc))
    return StoreError(str(exc))


class PostgresConnection:
    dialect = DIALECT

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        import psycopg

        self._c = connection
        self._errors: type[Exception] = psycopg.Error

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            return self._c.execute(translate(sql), params or None)
        except self._errors as exc:
            raise _error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            with self._c.cursor() as cursor:
                cursor.executemany(translate(sql), rows)
        except self._errors as exc:
            raise _error(exc) from exc

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        try:
            with (
                self._c.cursor() as cursor,
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        except self._errors as exc:
            raise _error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            with self._c.transaction():
                yield
        except self._errors as exc:
            raise _error(exc) from exc

    def has_table(self, name: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (name,),
        ).fetchone()
        return found is not None

    def close(self) -> None:
        self._c.close()


def connect(settings: DbSettings, *, read_only: bool = False) -> PostgresConnection:
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError(
            "a postgresql:// database needs psycopg: pip install 'setevnt[postgres]'"
        ) from exc
    # A lock waited for past the busy timeout fails the statement (StoreUnavailable), as
    # SQLite's busy timeout does, instead of holding a collector's batch forever.
    options = f"-c lock_timeout={round(settings.busy_timeout * 1000)}"
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        connection = psycopg.connect(
            settings.path,
            autocommit=True,
            connect_timeout=max(1, round(settings.busy_timeout)),
            options=options,
        )
    except psycopg.Error as exc:
        raise _error(exc) from exc
    return PostgresConnection(connection)
