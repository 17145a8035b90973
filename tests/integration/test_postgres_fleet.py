"""The whole product on PostgreSQL: two dispatcher services on one database, a storm from
a third process, and the operator's commands reading it, as from another host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import postgres_database
from tests.integration.fleet import Fleet, runs, wait_runs
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.broker

CLIENTS = 120


@pytest.fixture
def pg_fleet(amqp_url: str, tmp_path: Path) -> Iterator[Fleet]:
    with postgres_database() as database:
        running = Fleet(amqp_url, tmp_path)
        running.env["SETEVNT_DB"] = database.path
        try:
            yield running
        finally:
            running.stop()


def test_a_storm_on_postgresql_with_two_services_is_recorded_once(
    pg_fleet: Fleet, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    pg_fleet.serve()
    pg_fleet.serve()  # competing consumers of the ack, fleet and request queues
    pg_fleet.simulate(CLIENTS, "--connections", "2", "--record", str(record))
    wait_for(lambda: len(pg_fleet.clients()) == CLIENTS, 30, f"{CLIENTS} registered clients")

    code, outcome = pg_fleet.storm("CCIM32_STARTCYCLE", "--all", "--max-in-flight", "40")

    assert code == 0, outcome
    assert (outcome["state"], outcome["published"], outcome["acked"]) == ("done", CLIENTS, CLIENTS)
    done = wait_runs(record, CLIENTS)
    assert all(len(commands) == 1 for commands in done.values()), "each client ran it once"
    assert len(runs(record)) == CLIENTS
    storm_id = outcome["storm_id"]
    assert pg_fleet.status(storm_id)["counts"] == {"done": CLIENTS}
    results = pg_fleet.dispatcher("results", storm_id, "--json")
    assert results.returncode == 0, results.stderr
    assert len(results.stdout.splitlines()) == CLIENTS
    report = tmp_path / "report.html"
    made = pg_fleet.dispatcher("report", storm_id, "--out", str(report))
    assert made.returncode == 0, made.stderr
    assert storm_id in report.read_text(encoding="utf-8")
    assert not any(tmp_path.glob("*.db")), "nothing fell back to a SQLite file"
