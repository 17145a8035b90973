"""A storm's answers, read back from a real (temporary) ledger as the collector writes it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.answers import OVERLAP, Answers
from dispatcher.ledger import Answer, CommandRecord, Ledger, ack_row
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
def answers(storm: Ledger) -> Iterator[Answers]:
    """The storm's answers, read every 10 ms."""
    reader = Answers(storm.settings, "storm-t", every=0.01)
    reader.begin()
    reader.wait_ready()
    try:
        yield reader
    finally:
        reader.close()


def record(ledger: Ledger, command_id: str, status: str, received: float) -> None:
    """What the collector does with one ack."""
    ack = Ack(
        command_id=command_id,
        client_id="PC",
        status=status,
        received_at=received,
        agent_version="0.1.0",
        issued_at=received - 0.5,
        storm_id="storm-t",
        component="CCIM32",
        event="STARTCYCLE",
    )
    ledger.record_acks([ack_row(ack, received)])


def drained(answers: Answers, count: int) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        got += [(a.command_id, a.status) for a in answers.drain()]
        time.sleep(0.01)
    time.sleep(0.05)  # and nothing more after a few more polls
    return got + [(a.command_id, a.status) for a in answers.drain()]


def test_each_answer_once_deferred_then_final(storm: Ledger, answers: Answers) -> None:
    now = time.time()
    record(storm, "c0", "deferred", now)
    record(storm, "c1", "done", now)
    assert sorted(drained(answers, 2)) == [("c0", "deferred"), ("c1", "done")]
    record(storm, "c0", "done", now + 1)
    got = drained(answers, 1)
    assert got == [("c0", "done")], "the final answer follows the interim one, once"


def test_an_answer_written_late_within_the_overlap_is_seen(storm: Ledger, answers: Answers) -> None:
    now = time.time()
    record(storm, "c1", "done", now)
    assert drained(answers, 1) == [("c1", "done")]
    # Received before c1 but written down after it (the collector's database was busy).
    record(storm, "c2", "failed", now - OVERLAP / 2)
    [answer] = _wait_drain(answers)
    assert (answer.command_id, answer.status, answer.final) == ("c2", "failed", True)
    assert answer.latency == pytest.approx(0.5)


def _wait_drain(answers: Answers) -> list[Answer]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = answers.drain()
        if got:
            return got
        time.sleep(0.01)
    return []
