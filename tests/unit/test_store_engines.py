"""One setting picks the engine: a path is SQLite, a postgresql:// URL is PostgreSQL; a
broken server connection costs one statement."""

from __future__ import annotations

import pytest

from dispatcher.store.db import DB_ENV, DbSettings, StoreUnavailable
from dispatcher.store.ledger import Ledger
from tests.databases import admin_connection, postgres_database


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


def test_a_broken_server_connection_fails_one_statement_then_reconnects() -> None:
    with postgres_database() as settings, Ledger(settings) as ledger:
        admin = admin_connection()
        try:  # what a server restart does to the ledger's connection
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (settings.path.rsplit("/", 1)[1],),
            )
        finally:
            admin.close()
        with pytest.raises(StoreUnavailable):
            ledger.storms()
        assert ledger.storms() == []  # on a new connection


def test_the_stores_parameters_become_psycopgs_outside_quoted_text() -> None:
    from dispatcher.store.postgres import translate

    sql = "SELECT ':x', 'it''s ?', ?, :name, options::jsonb, 5 % 2 WHERE a = :a_1"
    assert translate(sql) == (
        "SELECT ':x', 'it''s ?', %s, %(name)s, options::jsonb, 5 %% 2 WHERE a = %(a_1)s"
    )
