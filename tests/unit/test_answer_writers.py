"""Several collectors write answers at once; a storm reading along gets each exactly once.

Each writer numbers its own batches in its commit order, so no batch committed late
under a lower number is skipped (what a shared sequence would allow on PostgreSQL), and
no row every writer updates makes them wait for each other.
"""

from __future__ import annotations

import threading
import time

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from dispatcher.storms.answers import Answers
from schemas.messages import Ack

WRITERS = 3
PER_WRITER = 120
BATCH = 8


def _storm(ledger: Ledger) -> list[str]:
    now = time.time()
    ids = [f"c{n}" for n in range(WRITERS * PER_WRITER)]
    storm = StormRecord(
        "s", "CCIM32", "STARTCYCLE", {}, len(ids), "running", None, "t", now, None, now, "t",
        False,
    )  # fmt: skip
    commands = [
        CommandRecord(cid, "s", f"PC{cid[1:]}", "CCIM32", "STARTCYCLE", "sent", expires_at=now + 60)
        for cid in ids
    ]
    ledger.create_storm(storm, commands)
    return ids


def _write(settings: DbSettings, ids: list[str], failures: list[BaseException]) -> None:
    try:
        with Ledger(settings) as ledger:
            for start in range(0, len(ids), BATCH):
                now = time.time()
                acks = [
                    (Ack(cid, f"PC{cid[1:]}", "done", now, "t", issued_at=now - 1), now)
                    for cid in ids[start : start + BATCH]
                ]
                assert len(ledger.record_answers(acks).answered) == len(acks)
    except BaseException as exc:  # reported by the test's thread
        failures.append(exc)


def test_answers_of_concurrent_writers_are_each_read_once(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger:
        ids = _storm(ledger)
        answers = Answers("s")
        failures: list[BaseException] = []
        writers = [
            threading.Thread(target=_write, args=(store_db, ids[n::WRITERS], failures))
            for n in range(WRITERS)
        ]
        for writer in writers:
            writer.start()
        seen: list[str] = []
        while any(writer.is_alive() for writer in writers):
            answers.read(ledger)  # reads along while the writers commit
            seen += [a.command_id for a in answers.drain()]
        for writer in writers:
            writer.join()
        answers.read(ledger)
        seen += [a.command_id for a in answers.drain()]
    assert failures == []
    assert sorted(seen) == sorted(ids)  # every answer, none twice
    with Ledger(store_db) as ledger:  # each writer numbered its own batches
        assert len({row[0] for row in ledger.answers("s")}) == WRITERS
