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
    store_error,
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

    return store_error(exc, psycopg.OperationalError, psycopg.IntegrityError)


class PostgresConnection:
    """A server connection that is opened again, between transactions, once it broke (a
    restarted server, a dropped link): the failed statement raises StoreUnavailable, the
    next one runs on a new connection."""

    dialect = DIALECT

    def __init__(self, settings: DbSettings, *, read_only: bool = False) -> None:
        import psycopg

        self._settings = settings
        self._read_only = read_only
        self._errors: type[Exception] = psycopg.Error
        self._in_transaction = False
        self._closing = False  # closed by its owner: never opened again
        self._c = _open(settings, read_only)

    def _live(self) -> psycopg.Connection[Any]:
        # Inside a transaction a new connection would run the rest outside it: fail instead.
        if self._c.closed and not self._in_transaction and not self._closing:
            self._c = _open(self._settings, self._read_only)
        return self._c

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            if not params:  # no parameters: psycopg sends the text as it is
                return self._live().execute(sql)
            return self._live().execute(translate(sql), params)
        except self._errors as exc:
            raise _error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            with self._live().cursor() as cursor:
                cursor.executemany(translate(sql), rows)
        except self._errors as exc:
            raise _error(exc) from exc

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        try:
            with (
                self._live().cursor() as cursor,
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        except self._errors as exc:
            raise _error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            with self._live().transaction():
                self._in_transaction = True
                try:
                    yield
                finally:
                    self._in_transaction = False
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
        self._closing = True
        self._c.close()


def connect(settings: DbSettings, *, read_only: bool = False) -> PostgresConnection:
    try:
        import psycopg  # noqa: F401  (only to say what is missing, before connecting)
    except ImportError as exc:
        raise StoreError(
            "a postgresql:// database needs psycopg: pip install 'setevnt[postgres]'"
        ) from exc
    return PostgresConnection(settings, read_only=read_only)


def _open(settings: DbSettings, read_only: bool) -> psycopg.Connection[Any]:
    import psycopg

    # A lock waited for past the busy timeout fails the statement (StoreUnavailable), as
    # SQLite's busy timeout does, instead of holding a collector's batch forever.
    options = f"-c lock_timeout={round(settings.busy_timeout * 1000)}"
    if read_only:
        options += " -c default_transaction_read_only=on"
    if not settings.durable:  # as SQLite's NORMAL: lost only if the server goes down
        options += " -c synchronous_commit=off"
    try:
        return psycopg.connect(
            settings.path,
            autocommit=True,
            connect_timeout=max(1, round(settings.busy_timeout)),
            options=options,
        )
    except psycopg.Error as exc:
        raise _error(exc) from exc
