"""The fast lane keeps its promise: a broker restart mid-storm loses nothing.

Fast-lane commands are transient, so a restart empties the queues of them. The storm
re-sends what was not answered when its publisher reconnects, and the dispatcher service
re-sends what is still pending (clients that were away) when its collector reconnects.
Runs against a private RabbitMQ node, restarted twice; the machine's broker is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import Dispatcher
from tests.integration.fleet import Fleet, PrivateNode, runs, wait_runs
from tests.integration.helpers import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ONLINE, AWAY = 30, 10


@pytest.fixture
def node(broker: None, tmp_path: Path) -> Iterator[PrivateNode]:
    directory = tmp_path / "node"
    directory.mkdir()
    try:
        started = PrivateNode(directory)
    except FileNotFoundError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs a private RabbitMQ node: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.discard()


def test_broker_restarts_during_and_after_a_fast_storm_lose_nothing(
    node: PrivateNode, tmp_path: Path
) -> None:
    fleet = Fleet(node.url, tmp_path)
    record = tmp_path / "runs.jsonl"
    online = [f"SIM{n:05d}" for n in range(ONLINE)]
    away = [f"AWAY{n:05d}" for n in range(AWAY)]
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(online + away) + "\n")
    try:
        service = fleet.serve()
        with Dispatcher(node.url) as dispatcher:
            dispatcher.provision(away)  # their agents are not running yet
        fleet.simulate(ONLINE, "--provision", "--record", str(record))
        storm = fleet.start_storm(
            *("CCIM32_STARTCYCLE", "--clients-file", str(targets), "--fast"),
            *("--rate", "10/s", "--delivery-wait", "2s", "--json"),
        )
        wait_for(lambda: sum(len(v) for v in runs(record).values()) >= 8, 30, "8 runs")
        node.restart()  # mid-storm: whatever sat in the queues is gone
        assert storm.proc.wait(timeout=90) in (0, 1), storm.output
        storm.terminate()
        wait_runs(record, ONLINE, timeout=60)
        # The storm is over; the away clients' commands wait in their queues...
        before = len(service.lines)
        node.restart()  # ...and are lost again, until the service re-sends them
        service.wait_line("fast lane: re-sent", timeout=90, after=before)
        line = next(x for x in service.lines[before:] if "fast lane: re-sent" in x)
        assert int(line.split("re-sent ")[1].split()[0]) >= AWAY, line
        fleet.simulate(AWAY, "--record", str(record), prefix="AWAY")
        done = wait_runs(record, ONLINE + AWAY, timeout=60)
        assert sorted(done) == sorted(online + away), "every client ran it"
        assert all(len(v) == 1 for v in done.values()), "and nobody ran it twice"
    finally:
        fleet.stop()
