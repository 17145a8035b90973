"""``setevnt-dispatcher prune``: what the ledger forgets and what it must keep."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dispatcher.cli.main import main
from dispatcher.store.db import DbSettings
from dispatcher.store.idempotency import IdempotencyKeys
from dispatcher.store.ledger import CommandRecord, Ledger, Pruned, StormRecord
from dispatcher.storms.answers import Answers
from schemas.messages import Ack
from tests.databases import query

NOW = time.time()
DAY = 86400.0
BEFORE = NOW - 30 * DAY  # --older-than 30d


def storm(storm_id: str, state: str, finished_days_ago: float | None) -> StormRecord:
    finished = NOW - finished_days_ago * DAY if finished_days_ago is not None else None
    created = (finished or NOW) - 60
    return StormRecord(
        storm_id, "CCIM32", "STARTCYCLE", {}, 1, state, None, "ops", created, finished,
        finished or NOW, "pid 1", False,
    )  # fmt: skip


def command(
    command_id: str, storm_id: str | None, expires_days_ago: float | None, **more: float
) -> CommandRecord:
    expires = NOW - expires_days_ago * DAY if expires_days_ago is not None else None
    return CommandRecord(
        command_id, storm_id, f"PC-{command_id}", "CCIM32", "STARTCYCLE", "done",
        expires_at=expires, **more,
    )  # fmt: skip


@pytest.fixture
def database(store_db: DbSettings) -> DbSettings:
    settings = store_db
    with Ledger(settings) as ledger:
        ledger.create_storm(storm("old-done", "done", 40), [command("a1", "old-done", 40)])
        ledger.create_storm(storm("old-halted", "halted", 31), [command("b1", "old-halted", 31)])
        ledger.create_storm(storm("recent", "done", 3), [command("c1", "recent", 3)])
        # Started long ago and still heartbeating: a running storm is never forgotten.
        ledger.create_storm(
            storm("old-running", "running", None), [command("d1", "old-running", 40)]
        )
        # Its process died long ago (status: interrupted): it ended with its last heartbeat.
        ledger.create_storm(
            replace(storm("long-dead", "running", None), heartbeat_at=NOW - 40 * DAY),
            [command("h1", "long-dead", 40)],
        )
        # Stopped with its service long ago, and nobody resumed it since.
        ledger.create_storm(
            storm("old-interrupted", "interrupted", 40), [command("g1", "old-interrupted", 40)]
        )
        # Finished long ago, but one command is valid for another day.
        ledger.create_storm(
            storm("old-long-ttl", "done", 40),
            [command("e1", "old-long-ttl", 40), command("e2", "old-long-ttl", -1)],
        )
        ledger.create_storm(
            storm("old-requested", "done", 40), [command("f1", "old-requested", 40)]
        )
        ledger.record_commands(
            [
                command("single-old", None, 35),
                command("single-recent", None, 1),
                command("single-pending", None, -1),
                # An ack for a command the ledger had no row of: no expiry, only when it came.
                command("stray-ack", "bench-raw-0", None, acked_at=NOW - 45 * DAY),
            ]
        )
    with IdempotencyKeys(settings, window=DAY) as keys:
        keys.remember("helpdesk", "T-4711", "old-requested", 1, NOW - 0.5 * DAY)
    return settings


def rows(settings: DbSettings, table: str, column: str) -> set[str]:
    return {row[0] for row in query(settings, f"SELECT {column} FROM {table}")}


def test_prune_forgets_finished_storms_and_expired_commands_only(database: DbSettings) -> None:
    with Ledger(database) as ledger:
        pruned = ledger.prune(BEFORE, NOW)

    assert pruned == Pruned(storms=4, commands=6)
    assert rows(database, "storms", "storm_id") == {
        "recent",
        "old-running",
        "old-long-ttl",
        "old-requested",
    }
    assert rows(database, "commands", "command_id") == {
        "c1",
        "d1",
        "e1",
        "e2",
        "f1",
        "single-recent",
        "single-pending",
    }


def test_a_request_key_keeps_its_storm_only_until_it_expires(database: DbSettings) -> None:
    with Ledger(database) as ledger:
        ledger.prune(BEFORE, NOW)
        assert ledger.storm("old-requested") is not None
        ledger.prune(BEFORE, NOW + DAY)  # the key expired half a day before this
        assert ledger.storm("old-requested") is None
        assert ledger.command("f1") is None


def test_a_dry_run_counts_the_same_and_deletes_nothing(database: DbSettings) -> None:
    storms_before = rows(database, "storms", "storm_id")
    commands_before = rows(database, "commands", "command_id")
    with Ledger(database) as ledger:
        counted = ledger.prune(BEFORE, NOW, dry_run=True)
        assert rows(database, "storms", "storm_id") == storms_before
        assert rows(database, "commands", "command_id") == commands_before
        assert ledger.prune(BEFORE, NOW) == counted


def test_a_ledger_without_request_keys_prunes_too(store_db: DbSettings) -> None:
    settings = store_db
    with Ledger(settings) as ledger:
        ledger.create_storm(storm("old", "cancelled", 60), [command("x", "old", 60)])
        assert ledger.prune(BEFORE, NOW) == Pruned(storms=1, commands=1)


def test_the_command_says_what_it_forgot(
    database: DbSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prune", "--older-than", "30d", "--db", database.path]
    assert main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.startswith("would forget 4 storm(s) and 6 command(s) from before ")
    assert dry.rstrip().endswith(f"UTC in {database.path}")
    assert main(argv) == 2, "without a terminal to ask on, prune needs --yes"
    assert "prune forgets 4 storm(s) and 6 command(s)" in capsys.readouterr().err
    argv.append("--yes")
    assert main(argv) == 0
    done = capsys.readouterr().out
    assert done.startswith("forgot 4 storm(s) and 6 command(s) from before ")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("forgot 0 storm(s) and 0 command(s) ")


def test_a_running_storm_is_kept_whatever_age_is_asked(database: DbSettings) -> None:
    """``--older-than 0s`` forgets everything that ended, never a storm still running."""
    with Ledger(database) as ledger:
        ledger.prune(NOW, NOW)
    # The other two are kept for their unexpired command and their request key.
    assert rows(database, "storms", "storm_id") == {"old-running", "old-long-ttl", "old-requested"}
    assert "d1" in rows(database, "commands", "command_id")


def test_a_heartbeat_keeps_waiting_storms_running_and_ended_ones_as_they_ended(
    database: DbSettings,
) -> None:
    with Ledger(database) as ledger:
        ledger.heartbeat(["long-dead", "old-done", "no-such-storm"], NOW)
        revived, ended = ledger.storm("long-dead"), ledger.storm("old-done")
    assert revived is not None and revived.heartbeat_at == NOW
    assert ended is not None and ended.heartbeat_at < NOW - 39 * DAY, "only running storms"


def _writers(settings: DbSettings) -> set[int]:
    return {int(row[0]) for row in query(settings, "SELECT writer_id FROM answer_writers")}


def _answer(settings: DbSettings, ledger: Ledger, command_id: str) -> int:
    """Answers the command through ``ledger``; the writer that registered for it."""
    known = _writers(settings)
    ack = Ack(command_id, f"PC-{command_id}", "done", NOW, "t", issued_at=NOW - 1)
    assert len(ledger.record_answers([(ack, NOW)]).answered) == 1
    [writer] = _writers(settings) - known
    return writer


def test_prune_forgets_writers_of_answers_gone_with_their_answers_only(
    store_db: DbSettings,
) -> None:
    """A writer goes once it has been idle past the cutoff and its answers are gone; one
    idle as long whose answers a storm may still read stays, as does one seen lately."""
    sent = {"status": "sent"}
    with Ledger(store_db) as ledger:
        ledger.create_storm(storm("old", "done", 40), [replace(command("o1", "old", 40), **sent)])
        ledger.create_storm(
            storm("live", "running", None),
            [replace(command(f"l{n}", "live", -1), **sent) for n in range(3)],
        )
    with Ledger(store_db) as gone, Ledger(store_db) as idle, Ledger(store_db) as busy:
        gone_id = _answer(store_db, gone, "o1")
        idle_id = _answer(store_db, idle, "l0")
        busy_id = _answer(store_db, busy, "l1")
        query(
            store_db,
            "UPDATE answer_writers SET seen_at = ? WHERE writer_id <> ?",
            (NOW - 40 * DAY, busy_id),
        )
        everyone = _writers(store_db)
        with Ledger(store_db) as pruner:
            pruner.prune(BEFORE, NOW, dry_run=True)
            assert _writers(store_db) == everyone, "a dry run forgets nothing"
            pruner.prune(BEFORE, NOW)
        assert _writers(store_db) == {idle_id, busy_id}
        assert gone_id not in _writers(store_db)

        # The storm reads on: the forgotten writer, busy again, writes as a new one.
        answers = Answers("live")
        with Ledger(store_db) as reader:
            answers.read(reader)
            assert sorted(a.command_id for a in answers.drain()) == ["l0", "l1"]
            again = _answer(store_db, gone, "l2")
            answers.read(reader)
            assert [a.command_id for a in answers.drain()] == ["l2"]
        assert again != gone_id
