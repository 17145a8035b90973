"""A storm's answers, read back from a real (temporary) ledger as the collector writes it.

The storm's ledger thread reads them after each batch of its writes; here a test reads
them when it likes, and through a real :class:`LedgerWriter` where the thread counts.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from dispatcher.store import ledger as ledger_module
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, LedgerWriter, StormAnswer, Writes
from dispatcher.storms.answers import Answers
from schemas.messages import Ack


@pytest.fixture
def storm(ledger: Ledger) -> Ledger:
    """The ledger's storm ``storm-t`` with three commands sent."""
    commands = [
        CommandRecord(f"c{n}", "storm-t", f"PC{n}", "CCIM32", "STARTCYCLE", "sent")
        for n in range(3)
    ]
    ledger.add_commands("storm-t", commands, time.time())
    return ledger


@pytest.fixture
def answers() -> Answers:
    return Answers("storm-t")


def record(ledger: Ledger, command_id: str, status: str, received: float) -> None:
    """What the collector does with one ack."""
    ack = Ack(
        command_id=command_id,
        client_id=f"PC{command_id[1:]}",  # the client the storm sent it to
        status=status,
        received_at=received,
        agent_version="0.1.0",
        issued_at=received - 0.5,
        storm_id="storm-t",
        component="CCIM32",
        event="STARTCYCLE",
    )
    ledger.record_answers([(ack, received)])


def drained(answers: Answers, ledger: Ledger, reads: int = 3) -> list[tuple[str, str]]:
    """What ``reads`` reads of the ledger hand over."""
    got: list[tuple[str, str]] = []
    for _ in range(reads):
        answers.read(ledger)
        got += [(a.command_id, a.status) for a in answers.drain()]
    return got


def test_each_answer_once_deferred_then_final(storm: Ledger, answers: Answers) -> None:
    now = time.time()
    record(storm, "c0", "deferred", now)
    record(storm, "c1", "done", now)
    assert sorted(drained(answers, storm)) == [("c0", "deferred"), ("c1", "done")]
    record(storm, "c0", "done", now + 1)
    assert drained(answers, storm) == [("c0", "done")], "the final answer follows, once"


def test_an_answer_written_down_late_is_seen_once(storm: Ledger, answers: Answers) -> None:
    now = time.time()
    record(storm, "c1", "done", now)
    assert drained(answers, storm) == [("c1", "done")]
    # Received a minute before c1 but written down after it (the collector's database
    # was busy, or it was restarted): what counts is the order the answers were written.
    record(storm, "c2", "failed", now - 60)
    answers.read(storm)
    [answer] = answers.drain()
    assert (answer.command_id, answer.status, answer.final) == ("c2", "failed", True)
    assert answer.latency == pytest.approx(0.5)
    # The same ack again (the broker redelivered it) changes nothing, so reads nothing.
    record(storm, "c2", "failed", now)
    record(storm, "c1", "done", now)
    assert drained(answers, storm) == []


def test_answers_are_read_once_however_many_reads(storm: Ledger, answers: Answers) -> None:
    now = time.time()
    for n in range(3):
        record(storm, f"c{n}", "deferred", now)
    assert sorted(drained(answers, storm, reads=20)) == [
        ("c0", "deferred"),
        ("c1", "deferred"),
        ("c2", "deferred"),
    ]
    record(storm, "c1", "done", now + 1)
    assert drained(answers, storm, reads=20) == [("c1", "done")], "deferred is not read again"


def test_the_ledger_thread_reads_answers_after_each_batch(storm: Ledger, answers: Answers) -> None:
    writer = LedgerWriter(storm.settings, "storm-t", after_write=answers.read)
    try:
        record(storm, "c0", "done", time.time())
        assert answers.drain() == [], "nothing is read before the storm writes"
        writer.submit(Writes())
        got = _wait_drain(answers)
        assert [(a.command_id, a.status) for a in got] == [("c0", "done")]
    finally:
        writer.close()


def test_a_failed_read_stops_the_answers_not_the_storm(
    storm: Ledger, answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Ledger(storm.settings)
    broken.close()  # every read on it fails
    answers.read(broken)
    assert "reading the storm's answers from the ledger stopped" in caplog.text
    record(storm, "c0", "done", time.time())
    assert drained(answers, storm) == [], "no more reads: the delivery wait takes over"


def _wait_drain(answers: Answers) -> list[StormAnswer]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = answers.drain()
        if got:
            return got
        time.sleep(0.01)
    return []


def test_a_ledger_of_an_earlier_release_gains_the_answer_numbers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # The commands table as an earlier release created it: no answer_seq, the index its
    # storms read their answers by, and one by storm and status that every mark moved.
    old_table = ledger_module.SCHEMA.split("CREATE TABLE IF NOT EXISTS commands")[1]
    old_table = old_table.split(");")[0].replace(",\n    answer_seq INTEGER", "")
    with sqlite3.connect(path) as connection:
        connection.execute(f"CREATE TABLE commands {old_table})")
        connection.execute("CREATE INDEX commands_answered ON commands (storm_id, acked_at)")
        connection.execute("CREATE INDEX commands_by_storm ON commands (storm_id, status)")
        connection.execute(
            "INSERT INTO commands (command_id, storm_id, client_id, status) "
            "VALUES ('c0', 'storm-t', 'PC0', 'sent')"
        )
    connection.close()
    with Ledger(DbSettings(str(path))) as upgraded:
        record(upgraded, "c0", "done", time.time())
        assert [row[2:4] for row in upgraded.answers("storm-t")] == [("c0", "done")]
    with sqlite3.connect(path) as connection:
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(commands)")}
    connection.close()
    assert "commands_by_answer" in indexes
    assert not indexes & {"commands_answered", "commands_by_storm"}
