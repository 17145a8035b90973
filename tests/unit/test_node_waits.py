"""One-off commands waiting for their queue's cluster node, as the store keeps them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from dispatcher.store import waiting
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger
from dispatcher.store.ledger_rows import Status
from dispatcher.store.waiting import CLAIM_LEASE, EXPIRED_CLAIMED_DETAIL, NodeWaits
from schemas.messages import Ack, Issued


def issue(ledger: Ledger, commands: dict[str, str], ttl: float = 600.0, **resend: object) -> None:
    now = time.time()
    planned = Issued("cli", "planned", "CCIM32", "STARTCYCLE", now, now + ttl, commands)
    waiting = Issued(
        "cli", "waiting-node", "CCIM32", "STARTCYCLE", now, now + ttl, commands, **resend
    )  # type: ignore[arg-type]
    ledger.record_issued([(planned, now), (waiting, now)])


def test_a_waiting_command_keeps_what_a_resend_needs(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db) as waits:
        issue(ledger, {"c1": "PC1"}, requested_by="ops@console", silent=True, force=True,
              not_before=1700000060.0)  # fmt: skip
        assert ledger.command("c1").status == Status.WAITING_NODE  # type: ignore[union-attr]
        [due] = waits.due(time.time(), 10)
    assert (due.command_id, due.client_id, due.component, due.event) == (
        "c1", "PC1", "CCIM32", "STARTCYCLE",
    )  # fmt: skip
    assert (due.requested_by, due.silent, due.force, due.not_before) == (
        "ops@console", True, True, 1700000060.0,
    )  # fmt: skip


def test_one_claim_wins_and_settles(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db) as one, NodeWaits(store_db) as two:
        issue(ledger, {"c1": "PC1", "c2": "PC2"}, requested_by="ops", silent=False, force=False)
        assert [one.claim("c1"), two.claim("c1")] == [True, False]
        assert [c.command_id for c in two.due(time.time(), 10)] == ["c2"]
        one.settle("c1", Status.SENT, time.time())
        command = ledger.command("c1")
        assert command is not None and command.status == Status.SENT and command.sent_at
        assert two.claim("c2")
        two.settle("c2", Status.WAITING_NODE, None)  # its node went down again
        assert [c.command_id for c in one.due(time.time(), 10)] == ["c2"]


def test_an_ack_that_came_first_wins_over_a_settle(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db) as waits:
        issue(ledger, {"c1": "PC1"}, requested_by="ops", silent=False, force=False)
        assert waits.claim("c1")
        ledger.record_answers([(Ack("c1", "PC1", "done", time.time(), "a"), time.time())])
        waits.settle("c1", Status.SENT, time.time())
        assert ledger.command("c1").status == Status.DONE  # type: ignore[union-attr]


def test_expired_commands_leave_the_wait(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db) as waits:
        issue(ledger, {"short": "PC1"}, ttl=1.0, requested_by="ops", silent=False, force=False)
        issue(ledger, {"long": "PC2"}, requested_by="ops", silent=False, force=False)
        later = time.time() + 5
        assert [c.command_id for c in waits.due(later, 10)] == ["long"]
        assert waits.expire(later) == 1
        assert ledger.command("short").status == Status.EXPIRED  # type: ignore[union-attr]
        assert not waits.claim("short")


def test_storm_commands_are_the_storms_own(store_db: DbSettings) -> None:
    """A storm re-sends its own waiting commands; the service's wait lists one-offs only."""
    with Ledger(store_db) as ledger, NodeWaits(store_db) as waits:
        ledger.record_commands(
            [CommandRecord("s1", "storm-1", "PC1", "CCIM32", "STARTCYCLE", "waiting-node",
                           expires_at=time.time() + 600)]
        )  # fmt: skip
        assert waits.due(time.time(), 10) == []
        assert not waits.claim("s1")


def test_a_claim_never_settled_is_taken_over_after_the_lease(store_db: DbSettings) -> None:
    """A service that died between claiming and settling leaves its claim: once the lease
    has run out the command is due again, and the next claim of it wins."""
    with Ledger(store_db) as ledger, NodeWaits(store_db) as dead, NodeWaits(store_db) as alive:
        issue(ledger, {"c1": "PC1"}, ttl=3600.0, requested_by="ops", silent=False, force=False)
        assert dead.claim("c1")  # and its service dies here
        now = time.time()
        assert alive.due(now, 10) == []  # within the lease its service may still send it
        assert not alive.claim("c1")
        assert [c.command_id for c in alive.due(now + CLAIM_LEASE + 1, 10)] == ["c1"]
        with NodeWaits(store_db, lease=0.0) as after_the_lease:
            assert after_the_lease.claim("c1")
            after_the_lease.settle("c1", Status.SENT, time.time())
            assert after_the_lease.due(time.time(), 10) == []  # settled: no claim left
        command = ledger.command("c1")
        assert command is not None and command.status == Status.SENT and command.sent_at


def test_an_ack_that_came_first_ends_the_claim_too(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db, lease=0.0) as waits:
        issue(ledger, {"c1": "PC1"}, requested_by="ops", silent=False, force=False)
        assert waits.claim("c1")
        ledger.record_answers([(Ack("c1", "PC1", "done", time.time(), "a"), time.time())])
        waits.settle("c1", Status.SENT, time.time())
        assert waits.due(time.time(), 10) == [] and not waits.claim("c1")
        assert waits.expire(time.time() + 3600) == 0
        assert ledger.command("c1").status == Status.DONE  # type: ignore[union-attr]


def test_a_stale_claim_past_its_expiry_becomes_expired(store_db: DbSettings) -> None:
    with Ledger(store_db) as ledger, NodeWaits(store_db) as waits:
        issue(ledger, {"c1": "PC1"}, ttl=1.0, requested_by="ops", silent=False, force=False)
        assert waits.claim("c1")
        later = time.time() + 5
        assert waits.expire(later) == 0  # within the lease: its service may yet settle it
        with NodeWaits(store_db, lease=0.0) as after_the_lease:
            assert after_the_lease.expire(later) == 1
        command = ledger.command("c1")
        assert command is not None and command.status == Status.EXPIRED
        assert command.detail == EXPIRED_CLAIMED_DETAIL


def test_each_round_reads_the_waiting_and_the_claimed_only(tmp_path: Path) -> None:
    """The service runs these every 2 s: on SQLite they must search the small indexes of
    waiting commands and of claims, not every one-off command the ledger keeps."""
    settings = DbSettings(str(tmp_path / "ledger.db"))
    with Ledger(settings):
        pass
    now = time.time()
    queries = {
        waiting._DUE: (now, now - CLAIM_LEASE, now, 500),
        waiting._EXPIRE: (waiting.EXPIRED_DETAIL, now),
        waiting._EXPIRE_CLAIMED: (EXPIRED_CLAIMED_DETAIL, now - CLAIM_LEASE, now),
    }
    connection = sqlite3.connect(settings.path)
    try:
        for sql, args in queries.items():
            plan = " ".join(
                row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", args)
            )
            assert "commands_by_answer" not in plan and "SCAN commands" not in plan, plan
            assert ("commands_waiting_node" in plan) == ("waiting-node" in sql), plan
            assert ("commands_claimed" in plan) == ("claimed_at <=" in sql), plan
    finally:
        connection.close()
