"""The schema comes in numbered steps: a database of any earlier release opens and is
brought up to date, a current one is left alone, a newer one is refused."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from dispatcher.store import db, migrations
from dispatcher.store.db import DbSettings, StoreError
from dispatcher.store.idempotency import IdempotencyKeys
from dispatcher.store.ledger import Ledger
from dispatcher.store.owed import Owed
from dispatcher.store.registry import StoreRegistry
from dispatcher.store.site import Site
from dispatcher.store.waiting import NodeWaits
from schemas.messages import Ack
from tests.databases import query

# The database as the release before schema versions left it: its tables, the columns
# it added to them, and the answer clock every writer of answers updated.
BEFORE_VERSIONS = """
CREATE TABLE storms (
    storm_id TEXT PRIMARY KEY, component TEXT NOT NULL, event TEXT NOT NULL,
    options TEXT NOT NULL, targets INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT,
    requested_by TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL,
    heartbeat_at REAL NOT NULL, owner TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, publishing_at REAL
);
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY, storm_id TEXT, client_id TEXT NOT NULL, component TEXT,
    event TEXT, status TEXT NOT NULL, not_before REAL, issued_at REAL, expires_at REAL,
    sent_at REAL, acked_at REAL, latency REAL, reason TEXT, detail TEXT,
    coalesced_into TEXT, answer_seq INTEGER
);
CREATE INDEX commands_pending ON commands (component, event, status);
CREATE TABLE answer_clock (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO answer_clock VALUES (1, 0);
ALTER TABLE commands ADD COLUMN exit_code INTEGER;
ALTER TABLE commands ADD COLUMN output TEXT;
CREATE INDEX commands_by_answer ON commands (storm_id, answer_seq);
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY, platform TEXT NOT NULL, agent_version TEXT NOT NULL,
    groups TEXT NOT NULL, components TEXT NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, last_kind TEXT NOT NULL, provisioned_at REAL,
    copylist_version TEXT
);
CREATE TABLE client_groups (
    group_name TEXT NOT NULL, client_id TEXT NOT NULL, PRIMARY KEY (group_name, client_id)
) WITHOUT ROWID;
CREATE INDEX client_groups_by_client ON client_groups (client_id);
CREATE TABLE site (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, set_at REAL NOT NULL, set_by TEXT NOT NULL
);
CREATE TABLE request_keys (
    requester TEXT NOT NULL, idempotency_key TEXT NOT NULL, storm_id TEXT NOT NULL,
    targets INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (requester, idempotency_key)
);
CREATE TABLE request_storms (
    storm_id TEXT NOT NULL, reply_to TEXT, correlation_id TEXT, added_at REAL NOT NULL
);
CREATE INDEX request_storms_by_storm ON request_storms (storm_id);
"""
NOW = time.time()


def _before_versions(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as old, old:
        old.executescript(BEFORE_VERSIONS)
        old.execute(
            "INSERT INTO storms VALUES ('s', 'CCIM32', 'STARTCYCLE', '{}', 2, 'running', "
            "NULL, 'ops', ?, NULL, ?, 'pid 1 on h', 0, ?)",
            (NOW, NOW, NOW),
        )
        old.executemany(
            "INSERT INTO commands (command_id, storm_id, client_id, component, event, status, "
            "expires_at, answer_seq) VALUES (?, 's', ?, 'CCIM32', 'STARTCYCLE', ?, ?, ?)",
            [("c0", "PC0", "done", NOW + 60, 1), ("c1", "PC1", "sent", NOW + 60, None)],
        )
        old.execute("UPDATE answer_clock SET n = 1")
        old.execute(
            "INSERT INTO clients VALUES ('PC0', 'nt', '1', '[\"lab\"]', '{}', ?, ?, 'hello', "
            "?, 'v1')",
            (NOW, NOW, NOW),
        )
        old.execute("INSERT INTO client_groups VALUES ('lab', 'PC0')")
        old.execute("INSERT INTO site VALUES ('copylist_version', 'v2', ?, 'ops')", (NOW,))
        old.execute("INSERT INTO request_keys VALUES ('svc', 'k', 's', 2, ?, ?)", (NOW, NOW + 60))
        old.execute("INSERT INTO request_storms VALUES ('s', 'reply', 'corr', ?)", (NOW,))


def test_a_database_of_the_release_before_versions_opens_and_keeps_everything(
    tmp_path: Path,
) -> None:
    settings = DbSettings(str(tmp_path / "setevnt.db"))
    _before_versions(tmp_path / "setevnt.db")
    with Ledger(settings) as ledger:
        # The clock's answers read as the numbers of one writer, 0; new ones follow theirs.
        seen = list(ledger.answers("s"))
        assert [row[:4] for row in seen] == [(0, 1, "c0", "done")]
        ack = Ack("c1", "PC1", "done", NOW, "1", issued_at=NOW - 1)
        assert len(ledger.record_answers([(ack, NOW)]).answered) == 1
        [(writer, _, command_id, status, *_)] = ledger.answers("s", after={0: 1})
        assert (command_id, status) == ("c1", "done") and writer != 0
    with StoreRegistry(settings) as registry:
        client = registry.get("PC0")
        assert client is not None and client.groups == ("lab",)
        assert [c.client_id for c in registry.clients(group="lab")] == ["PC0"]
    with Site(settings) as site:
        setting = site.copylist_version()
        assert setting is not None and setting.value == "v2"
    with IdempotencyKeys(settings) as keys:
        remembered = keys.find("svc", "k", NOW)
        assert remembered is not None and remembered.storm_id == "s"
    with Owed(settings) as owed:
        assert list(owed.storms()) == ["s"]
    with NodeWaits(settings) as waits:  # step 5: the claims of waiting-node commands
        assert waits.due(NOW, 10) == [] and waits.expire(NOW) == 0
    tables = {row[0] for row in query(settings, "SELECT name FROM sqlite_master")}
    assert "answer_clock" not in tables
    # The clock's writer counts as seen when the database was brought up to date: prune
    # keeps it for its age from then.
    [(seen_at,)] = query(settings, "SELECT seen_at FROM answer_writers WHERE writer_id = 0")
    assert seen_at >= NOW
    assert query(settings, "SELECT version FROM schema_version") == [
        (len(migrations.SQLITE_STEPS),)
    ]


def test_a_current_database_is_left_alone_and_a_newer_one_refused(store_db: DbSettings) -> None:
    with Ledger(store_db):
        pass
    connection = db.connect(store_db)
    try:
        steps = migrations.steps_of(connection)
        assert migrations.version(connection) == len(steps)
        migrations.migrate(connection)  # nothing to do
        assert migrations.version(connection) == len(steps)
        connection.execute("UPDATE schema_version SET version = ?", (len(steps) + 1,))
    finally:
        connection.close()
    with pytest.raises(StoreError, match="newer than this release"):
        Ledger(store_db)


def test_every_store_opens_a_new_database_whichever_comes_first(store_db: DbSettings) -> None:
    with Owed(store_db) as owed:
        owed.add("s", None, NOW)
    with Ledger(store_db) as ledger:
        assert ledger.storms() == []
    with Owed(store_db) as owed:
        assert list(owed.storms()) == ["s"]
