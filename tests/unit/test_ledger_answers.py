"""What an ack may do to the ledger: update its own command's row, nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from schemas.messages import Ack, Issued
from tests.databases import query


@pytest.fixture
def ledger(store_db: DbSettings) -> Iterator[Ledger]:
    opened = Ledger(store_db)
    now = time.time()
    for status in ("planned", "sent"):
        commands = {"c1": "PC1", "c2": "PC2"}
        opened.record_issued(
            [(Issued("t", status, "CCIM32", "STARTCYCLE", now, now + 60, commands), now)]
        )
    with opened:
        yield opened


def rows(ledger: Ledger) -> int:
    return int(query(ledger.settings, "SELECT count(*) FROM commands")[0][0])


def ack(command_id: str, client: str, status: str = "done", **fields: object) -> Ack:
    return Ack(command_id, client, status, time.time(), "t", **fields)  # type: ignore[arg-type]


def test_an_ack_never_creates_a_row(ledger: Ledger) -> None:
    before = rows(ledger)
    recorded = ledger.record_answers(
        [
            (ack(f"forged-{n}", "PC1", "deferred", storm_id="storm-x"), time.time())
            for n in range(50)
        ]
    )
    assert (recorded.unknown, recorded.answered) == (50, [])
    assert rows(ledger) == before


def test_an_ack_for_another_clients_command_changes_nothing(ledger: Ledger) -> None:
    recorded = ledger.record_answers([(ack("c2", "PC1", "failed"), time.time())])
    assert recorded.unknown == 1
    assert ledger.command("c2").status == "sent"  # type: ignore[union-attr]


def test_the_row_not_the_ack_names_the_command(ledger: Ledger) -> None:
    forged = ack("c1", "PC1", component="CLISVCL", event="CLOSE", storm_id="storm-x", issued_at=1.0)
    [answered] = ledger.record_answers([(forged, time.time())]).answered
    assert (answered.component, answered.event, answered.storm_id) == ("CCIM32", "STARTCYCLE", None)
    assert answered.latency is not None and answered.latency < 60  # the row's issue time
    command = ledger.command("c1")
    assert command is not None and (command.status, command.storm_id) == ("done", None)


def test_a_final_answer_stays_and_repeats_are_counted(ledger: Ledger) -> None:
    first = ledger.record_answers([(ack("c1", "PC1", "deferred"), time.time())])
    again = ledger.record_answers([(ack("c1", "PC1", "deferred"), time.time())])
    done = ledger.record_answers([(ack("c1", "PC1", "done", exit_code=-1073741819), time.time())])
    late = ledger.record_answers([(ack("c1", "PC1", "failed"), time.time())])
    assert [len(r.answered) for r in (first, again, done, late)] == [1, 0, 1, 0]
    assert (again.repeated, late.repeated) == (1, 1)
    assert done.answered[0].previous == "deferred"
    command = ledger.command("c1")
    assert command is not None and command.status == "done"


def test_one_batch_applies_acks_in_order(ledger: Ledger) -> None:
    now = time.time()
    batch = [(ack("c1", "PC1", "deferred"), now), (ack("c1", "PC1", "done"), now + 1)]
    recorded = ledger.record_answers(batch)
    assert [a.ack.status for a in recorded.answered] == ["deferred", "done"]
    assert recorded.answered[1].previous == "deferred"


def test_issued_outcomes_settle_only_planned_rows(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_answers([(ack("c1", "PC1", "done"), now)])
    late = Issued(
        "t", "unroutable", "CCIM32", "STARTCYCLE", now, now + 60, {"c1": "PC1", "c2": "PC2"}
    )
    ledger.record_issued([(late, now)])
    assert ledger.command("c1").status == "done"  # type: ignore[union-attr]
    assert ledger.command("c2").status == "sent"  # type: ignore[union-attr]


def test_a_sent_outcome_after_the_ack_keeps_the_status_and_fills_the_sent_time(
    ledger: Ledger,
) -> None:
    now = time.time()
    planned = Issued("t", "planned", "CCIM32", "STARTCYCLE", now, now + 60, {"c3": "PC3"})
    ledger.record_issued([(planned, now)])
    ledger.record_answers([(ack("c3", "PC3", "done"), now + 1)])
    sent = Issued("t", "sent", "CCIM32", "STARTCYCLE", now, now + 60, {"c3": "PC3"})
    ledger.record_issued([(sent, now + 2)])
    command = ledger.command("c3")
    assert command is not None and command.status == "done"
    assert command.sent_at == command.acked_at == pytest.approx(now + 1)
    ledger.record_issued([(sent, now + 3)])  # a repeat changes nothing
    assert ledger.command("c3") == command


def test_a_sent_outcome_never_marks_a_command_the_broker_refused(ledger: Ledger) -> None:
    now = time.time()
    refused = Issued("t", "unroutable", "CCIM32", "STARTCYCLE", now, now + 60, {"c4": "PC4"})
    planned = Issued("t", "planned", "CCIM32", "STARTCYCLE", now, now + 60, {"c4": "PC4"})
    sent = Issued("t", "sent", "CCIM32", "STARTCYCLE", now, now + 60, {"c4": "PC4"})
    ledger.record_issued([(planned, now), (refused, now), (sent, now + 1)])
    command = ledger.command("c4")
    assert command is not None and (command.status, command.sent_at) == ("unroutable", None)
