"""A storm's "sent" marks: by row where its writer knows the row, by command id otherwise."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from dispatcher.store import db
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import (
    CommandRecord,
    Ledger,
    LedgerWriter,
    SentMark,
    StormRecord,
    Writes,
)


def _storm(ledger: Ledger, storm_id: str, clients: list[str]) -> None:
    now = time.time()
    record = StormRecord(
        storm_id, "CCIM32", "STARTCYCLE", {}, len(clients), "running", None, "ops", now,
        None, now, "pid 1 on elsewhere", False,
    )  # fmt: skip
    ledger.create_storm(
        record,
        [
            CommandRecord(f"{storm_id}-{c}", storm_id, c, "CCIM32", "STARTCYCLE", "planned")
            for c in clients
        ],
    )


def _mark(command_id: str, at: float) -> SentMark:
    return SentMark("sent", at, at + 60, at + 0.1, command_id)


def test_marks_by_row_and_by_id_write_the_same(tmp_path: Path) -> None:
    with Ledger(DbSettings(str(tmp_path / "setevnt.db"))) as ledger:
        _storm(ledger, "s", ["PC1", "PC2"])
        rows = ledger.rows_of("s")
        assert set(rows) == {"s-PC1", "s-PC2"}
        # PC3 joins after the writer read its rows (a drift storm grows like this).
        ledger.add_commands(
            "s", [CommandRecord("s-PC3", "s", "PC3", "CCIM32", "STARTCYCLE", "planned")], 1.0
        )
        marks = [_mark("s-PC1", 100.0), _mark("s-PC3", 200.0)]
        ledger.apply(Writes(sent=marks), "s", time.time(), rows)
        for command_id, at in (("s-PC1", 100.0), ("s-PC3", 200.0)):
            command = ledger.command(command_id)
            assert command is not None
            assert (command.status, command.issued_at, command.expires_at, command.sent_at) == (
                "sent", at, at + 60, at + 0.1,
            )  # fmt: skip
        untouched = ledger.command("s-PC2")
        assert untouched is not None and untouched.status == "planned"
        assert untouched.sent_at is None


def test_a_row_that_is_not_the_commands_is_left_alone(tmp_path: Path) -> None:
    with Ledger(DbSettings(str(tmp_path / "setevnt.db"))) as ledger:
        _storm(ledger, "s", ["PC1", "PC2"])
        rows = ledger.rows_of("s")
        wrong = {"s-PC1": rows["s-PC2"]}  # as if the table had been rebuilt meanwhile
        ledger.apply(Writes(sent=[_mark("s-PC1", 100.0)]), "s", time.time(), wrong)
        for command_id in ("s-PC1", "s-PC2"):
            command = ledger.command(command_id)
            assert command is not None and command.status == "planned"


def test_the_writer_marks_what_it_is_given(store_db: DbSettings) -> None:
    settings = store_db
    with Ledger(settings) as ledger:
        _storm(ledger, "s", ["PC1", "PC2"])
    writer = LedgerWriter(settings, "s")
    writer.submit(Writes(sent=[_mark("s-PC1", 100.0), _mark("s-PC2", 100.0)]))
    writer.close()
    with Ledger(settings) as ledger:
        assert ledger.counts_at("s", 0.0) == {"sent": 2}


def _flushes_every_commit(settings: DbSettings) -> bool:
    connection = db.connect(settings)
    try:
        if settings.is_postgres:
            return bool(connection.execute("SHOW synchronous_commit").fetchone()[0] == "on")
        return bool(connection.execute("PRAGMA synchronous").fetchone()[0] == 2)  # FULL
    finally:
        connection.close()


def test_only_a_connection_that_is_not_durable_skips_the_flush(store_db: DbSettings) -> None:
    assert _flushes_every_commit(store_db)
    assert not _flushes_every_commit(replace(store_db, durable=False))


def test_the_writer_alone_writes_without_a_flush_per_commit(store_db: DbSettings) -> None:
    """Its marks are made again by a resume; the collector's acks keep their flush."""
    with Ledger(store_db) as ledger:
        _storm(ledger, "s", ["PC1"])
        assert ledger.settings.durable
    seen: list[bool] = []
    writer = LedgerWriter(
        store_db, "s", after_write=lambda ledger: seen.append(ledger.settings.durable)
    )
    writer.submit(Writes(sent=[_mark("s-PC1", 100.0)]))
    writer.close()
    assert seen == [False]
    with Ledger(store_db) as ledger:
        assert ledger.counts_at("s", 0.0) == {"sent": 1}
