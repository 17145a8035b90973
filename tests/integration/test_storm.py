"""Storms end to end: real dispatcher processes, simulated fleets, the real broker."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from broker import topology
from dispatcher import Dispatcher
from dispatcher.storm import spread_offset
from tests.integration.fleet import Fleet, runs, starts, storm_id_of, wait_runs
from tests.integration.helpers import queue_depth, wait_for

pytestmark = pytest.mark.broker


def ids_file(tmp: Path, client_ids: list[str]) -> str:
    path = tmp / "targets.txt"
    path.write_text("\n".join(client_ids) + "\n")
    return str(path)


def sim_ids(count: int, prefix: str = "SIM") -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(count)]


def test_storm_reaches_every_client_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    fleet.serve()
    fleet.simulate(300, "--connections", "3", "--record", str(record))
    wait_for(lambda: len(fleet.clients()) == 300, 20, "300 registered clients")
    code, outcome = fleet.storm("CCIM32_STARTCYCLE", "--all", "--max-in-flight", "50")
    assert code == 0, outcome
    assert outcome["state"] == "done"
    assert (outcome["published"], outcome["acked"], outcome["failed"]) == (300, 300, 0)
    assert outcome["latency_s"]["p50"] is not None
    done = wait_runs(record, 300)
    assert sorted(done) == sim_ids(300)
    assert all(len(commands) == 1 for commands in done.values()), "each client ran it once"
    time.sleep(0.5)  # a duplicate would show up by now
    assert sum(len(v) for v in runs(record).values()) == 300
    # The service's collector recorded the same outcome in the ledger.
    assert fleet.status(outcome["storm_id"])["counts"] == {"done": 300}


def test_max_errors_halts_a_failing_storm_and_says_why(fleet: Fleet, tmp_path: Path) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    fleet.simulate(100, "--provision", "--failure-rate", "1")
    targets = ids_file(tmp_path, sim_ids(100))
    code, outcome = fleet.storm(
        "CCIM32_STARTCYCLE",
        "--clients-file",
        targets,
        "--max-errors",
        "5%",
        "--max-in-flight",
        "3",
    )
    assert code == 1
    assert outcome["state"] == "halted"
    assert "6 errors exceed --max-errors 5%" in outcome["reason"]
    assert "failed: signal-failed" in outcome["reason"]
    assert outcome["published"] < 20, "halted early, not after the whole fleet"
    assert outcome["cancelled"] + outcome["published"] == 100
    assert outcome["unsent"] == 0


def test_spread_starts_each_client_at_its_own_offset(fleet: Fleet, tmp_path: Path) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    record = tmp_path / "runs.jsonl"
    fleet.simulate(20, "--provision", "--record", str(record))
    targets = ids_file(tmp_path, sim_ids(20))
    code, outcome = fleet.storm(
        "CQMGR32_STARTCYCLE", "--clients-file", targets, "--spread", "3s", "--delivery-wait", "5s"
    )
    assert code == 0, outcome
    storm_id = outcome["storm_id"]
    started = starts(record)
    assert len(started) == 20
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        created = db.execute("SELECT created_at FROM storms WHERE storm_id = ?", (storm_id,))
        origin = created.fetchone()[0]
        rows = db.execute(
            "SELECT command_id, client_id FROM commands WHERE storm_id = ?", (storm_id,)
        ).fetchall()
    for command_id, client_id in rows:
        expected = origin + spread_offset(storm_id, client_id, 3.0)
        assert expected - 0.05 <= started[command_id] <= expected + 0.6, client_id
    offsets = sorted(t - origin for t in started.values())
    assert offsets[-1] - offsets[0] > 1.5, "spread over the window, not all at once"


def test_pending_commands_are_coalesced(fleet: Fleet, tmp_path: Path) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    clients = sim_ids(10)
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(clients)  # queues, but nobody consumes them
    targets = ids_file(tmp_path, clients)
    wait = ("--delivery-wait", "0.3s")
    _code, first = fleet.storm("CCIM32_STARTCYCLE", "--clients-file", targets, *wait)
    assert (first["published"], first["pending_offline"]) == (10, 10)
    _code, again = fleet.storm("CCIM32_STARTCYCLE", "--clients-file", targets, *wait)
    assert (again["published"], again["coalesced"]) == (0, 10)
    assert all(queue_depth(fleet.url, topology.client_queue(c)) == 1 for c in clients)
    _code, other = fleet.storm("CQMGR32_STARTCYCLE", "--clients-file", targets, *wait)
    assert (other["published"], other["coalesced"]) == (10, 0), "another event is not pending"
    shown = fleet.dispatcher("status", again["storm_id"])
    assert "coalesced 10" in shown.stdout


def test_cancel_stops_publishing(fleet: Fleet, tmp_path: Path) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    record = tmp_path / "runs.jsonl"
    fleet.simulate(100, "--provision", "--record", str(record))
    targets = ids_file(tmp_path, sim_ids(100))
    storm = fleet.start_storm("CCIM32_STARTCYCLE", "--clients-file", targets, "--rate", "20/s")
    try:
        storm.wait_line("storm storm-", timeout=20)
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        wait_for(lambda: fleet.status(storm_id)["published"] >= 10, 20, "10 published")
        cancelled = fleet.dispatcher("cancel", storm_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled" in cancelled.stdout
        assert storm.proc.wait(timeout=20) == 1
    finally:
        storm.terminate()
    status = fleet.status(storm_id)
    assert status["state"] == "cancelled" and "cancel" in status["reason"]
    assert status["cancelled"] > 40 and status["published"] + status["cancelled"] == 100
    assert status["rate_per_second"] is None and status["eta_s"] is None
    # Its last progress line counts the cancelled commands apart from those it published.
    last = [line for line in storm.lines if "% published " in line][-1]
    assert f"published {status['published']}/{status['published']}  " in last, last
    assert f"cancelled {status['cancelled']}  " in last, last
    # Exactly what was published ran, nothing else.
    wait_runs(record, status["published"])
    time.sleep(0.5)
    assert sum(len(v) for v in runs(record).values()) == status["published"]


def test_status_shows_a_running_storms_pace_and_when_it_will_end(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    fleet.simulate(60, "--provision")
    targets = ids_file(tmp_path, sim_ids(60))  # ten seconds at 6/s: still running when read
    storm = fleet.start_storm("CCIM32_STARTCYCLE", "--clients-file", targets, "--rate", "6/s")
    try:
        storm.wait_line("storm storm-", timeout=20)
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        wait_for(lambda: fleet.status(storm_id)["acked"] >= 5, 20, "5 answered")
        running = fleet.status(storm_id)
        assert running["state"] == "running", running
        counts = running["counts"]
        rest = counts.get("planned", 0) + counts.get("sent", 0)
        assert rest > 0 and running["rate_per_second"] > 0, running
        assert running["eta_s"] == pytest.approx(rest / running["rate_per_second"], abs=0.1)
        shown = fleet.dispatcher("status", storm_id, "--once")
        assert re.search(r"settling \d+/s  eta \d+s \(average", shown.stdout), shown.stdout
    finally:
        storm.terminate()  # SIGTERM cancels it
    assert fleet.status(storm_id)["eta_s"] is None


def test_status_after_a_dispatcher_restart_and_resume(fleet: Fleet, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    fleet.serve()
    fleet.simulate(60, "--provision", "--record", str(record))
    targets = ids_file(tmp_path, sim_ids(60))
    storm = fleet.start_storm("CCIM32_STARTCYCLE", "--clients-file", targets, "--rate", "20/s")
    storm.wait_line("storm storm-", timeout=20)
    storm_id = storm_id_of(storm.lines)
    assert storm_id is not None, storm.output
    wait_for(lambda: fleet.status(storm_id)["published"] >= 10, 20, "10 published")
    storm.proc.send_signal(signal.SIGKILL)  # the dispatcher dies mid-storm
    storm.kill()
    time.sleep(0.5)  # the service records the acks of the commands that ran meanwhile
    status = fleet.status(storm_id)
    assert status["state"] == "interrupted"
    sent, unsent = status["published"], status["unsent"]
    assert sent >= 10 and unsent > 0 and sent + unsent == 60
    shown = fleet.dispatcher("status", storm_id)
    assert f"{sent} command(s) were confirmed sent, {unsent} were not" in shown.stdout
    # What ran is what the ledger says was sent (a publish awaiting its confirm when the
    # dispatcher died may have reached its client too: at most a couple at 20/s).
    ran = wait_runs(record, sent)
    assert sent <= sum(len(v) for v in ran.values()) <= sent + 2
    resumed = fleet.dispatcher("resume", storm_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = wait_runs(record, 60)
    assert sorted(done) == sim_ids(60)
    assert all(len(v) == 1 for v in done.values()), "resumed: nobody ran it twice"
    final = fleet.status(storm_id)
    assert final["state"] == "done" and final["acked"] == 60


def test_offline_clients_do_not_stall_the_window(fleet: Fleet, tmp_path: Path) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    online, silent, stale = sim_ids(20), sim_ids(5, "MUTE"), sim_ids(5, "STALE")
    fleet.simulate(20, "--provision")
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(silent + stale)
    fleet.register(online + silent)  # registered and recently heard from: "online"
    fleet.register(stale, age=3600)  # not heard from for an hour: offline
    started = time.monotonic()
    code, outcome = fleet.storm(
        "CCIM32_STARTCYCLE", "--all", "--max-in-flight", "3", "--delivery-wait", "0.5s"
    )
    took = time.monotonic() - started
    assert code == 0, outcome
    assert outcome["acked"] == 20
    assert outcome["pending_offline"] == 10
    # 5 silent clients cost one delivery wait each at most, 3 at a time; the stale ones
    # never held a slot. Stalling would take the whole fleet to time out instead.
    assert took < 10
    for client in silent + stale:  # still queued for when they come back
        assert queue_depth(fleet.url, topology.client_queue(client)) == 1


def test_a_storm_without_the_service_says_its_answers_will_come_late(
    fleet: Fleet, tmp_path: Path
) -> None:
    clients = sim_ids(3)
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(clients)
    targets = ids_file(tmp_path, clients)
    done = fleet.dispatcher(
        "storm", "CCIM32_STARTCYCLE", "--clients-file", targets, "--delivery-wait", "0.3s"
    )
    assert "no `setevnt-dispatcher serve` is collecting acks" in done.stderr, done.stderr
    assert "3/3" in done.stderr, "it still published everything"
