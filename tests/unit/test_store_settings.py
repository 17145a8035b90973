"""One setting picks the engine: a path is SQLite, a postgresql:// URL is PostgreSQL."""

from __future__ import annotations

import pytest

from dispatcher.store.db import DB_ENV, DbSettings


def test_a_path_is_sqlite_and_a_url_is_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not DbSettings("setevnt.db").is_postgres
    assert DbSettings("postgresql://setevnt@db/setevnt").is_postgres
    assert DbSettings("postgres://setevnt@db/setevnt").is_postgres
    monkeypatch.setenv(DB_ENV, "postgresql://setevnt@db/setevnt")
    assert DbSettings.from_env().is_postgres
    assert not DbSettings.from_env("/var/lib/setevnt/setevnt.db").is_postgres


def test_where_the_database_is_never_shows_a_password() -> None:
    shown = str(DbSettings("postgresql://setevnt:s3cret@db.example:5432/setevnt"))
    assert shown == "postgresql://setevnt@db.example:5432/setevnt"
    assert str(DbSettings("/var/lib/setevnt/setevnt.db")) == "/var/lib/setevnt/setevnt.db"
