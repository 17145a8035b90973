"""Databases for store tests: a file per test for SQLite, a database per test on the
machine's PostgreSQL (127.0.0.1:5432, user postgres), dropped after it.

With CI=true a missing PostgreSQL (or psycopg) fails the run; on a developer machine the
PostgreSQL tests skip with the reason. ``make postgres`` installs and starts one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dispatcher.store.db import DbSettings

POSTGRES_URL = os.environ.get("SETEVNT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
ENGINES = ("sqlite", "postgresql")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def admin_connection() -> Any:
    """An autocommit connection to the server's ``postgres`` database, or skip/fail."""
    try:
        import psycopg
    except ImportError:
        problem = "psycopg is not installed: pip install -e '.[dev]'"
    else:
        try:
            return psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            problem = f"no PostgreSQL at {POSTGRES_URL} ({exc}); run `make postgres`"
    if in_ci():
        pytest.fail(f"CI needs PostgreSQL: {problem}", pytrace=False)
    pytest.skip(problem)


@contextmanager
def postgres_database() -> Iterator[DbSettings]:
    """A new, empty database of its own, force-dropped afterwards."""
    admin = admin_connection()
    name = f"setevnt_test_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield DbSettings(f"{POSTGRES_URL}/{name}")
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


@contextmanager
def database(engine: str, tmp_path: Any) -> Iterator[DbSettings]:
    if engine == "sqlite":
        yield DbSettings(str(tmp_path / "setevnt.db"))
    else:
        with postgres_database() as settings:
            yield settings


def query(settings: DbSettings, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on its own connection, as another process would; its rows."""
    from dispatcher.store import db

    connection = db.connect(settings)
    try:
        cursor = connection.execute(sql, params)
        return list(cursor) if sql.lstrip().upper().startswith("SELECT") else []
    finally:
        connection.close()
