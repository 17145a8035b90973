"""Storms end to end: real dispatcher processes, simulated fleets, the real broker."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from broker import topology
from dispatcher import Dispatcher
from dispatcher.storms.storm import spread_offset
from tests.integration.fleet import Fleet, runs, starts, storm_id_of, wait_runs
from tests.integration.helpers import channel, queue_depth, wait_for

pytestmark = pytest.mark.broker


def ids_file(tmp: Path, client_ids: list[str]) -> str:
    path = tmp / "targets.txt"
    path.write_text("\n".join(client_ids) + "\n")
    return str(path)


def sim_ids(count: int, prefix: str = "SIM") -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(count)]


def storm_commands(fleet: Fleet, storm_id: str) -> dict[str, tuple[str, str]]:
    """Client id -> (command id, status) of a storm's commands, as the ledger has them."""
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        rows = db.execute(
            "SELECT client_id, command_id, status FROM commands WHERE storm_id = ?", (storm_id,)
        ).fetchall()
    return {client: (command, status) for client, command, status in rows}


def queue_depths(url: str, client_ids: list[str]) -> dict[str, int]:
    """Client id -> messages waiting in its queue."""
    connection, ch = channel(url)
    try:
        return {
            c: ch.queue_declare(topology.client_queue(c), passive=True).method.message_count
            for c in client_ids
        }
    finally:
        connection.close()


def runs_of(records: Sequence[Path]) -> dict[str, list[str]]:
    """Client id -> command ids it finished running, from several simulators' records."""
    return {client: done for record in records for client, done in runs(record).items()}


def ran_commands(records: Sequence[Path]) -> set[str]:
    return {command for done in runs_of(records).values() for command in done}


def sent_to(fleet: Fleet, storm_id: str, client_ids: set[str]) -> set[str]:
    """Ids of the storm's commands to these clients that the ledger counts published."""
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        rows = db.execute(
            "SELECT client_id, command_id FROM commands WHERE storm_id = ? AND "
            "(sent_at IS NOT NULL OR acked_at IS NOT NULL OR status = 'deferred')",
            (storm_id,),
        ).fetchall()
    return {command for client, command in rows if client in client_ids}


def test_storm_reaches_every_client_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    fleet.serve()
    simulator = fleet.simulate(300, "--connections", "3", "--record", str(record))
    wait_for(lambda: len(fleet.clients()) == 300, 20, "300 registered clients")
    code, outcome = fleet.storm("CCIM32_STARTCYCLE", "--all", "--max-in-flight", "50")
    assert code == 0, outcome
    assert outcome["state"] == "done"
    assert (outcome["published"], outcome["acked"], outcome["failed"]) == (300, 300, 0)
    assert outcome["latency_s"]["p50"] is not None
    wait_runs(record, 300)
    simulator.terminate(timeout=30)  # a duplicate not run by now stays in its queue
    done = runs(record)
    assert sorted(done) == sim_ids(300)
    assert all(len(commands) == 1 for commands in done.values()), "each client ran it once"
    assert not any(queue_depths(fleet.url, sim_ids(300)).values()), "no duplicate queued"
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
            "SELECT command_id, client_id, not_before, sent_at FROM commands WHERE storm_id = ?",
            (storm_id,),
        ).fetchall()
    for command_id, client_id, not_before, sent_at in rows:
        expected = origin + spread_offset(storm_id, client_id, 3.0)
        assert not_before == pytest.approx(expected, abs=1e-6), client_id
        # Never before its offset; at it once its command is with the broker (the storm's
        # own start-up may hold back the clients whose offsets come first).
        assert expected - 0.05 <= started[command_id] <= max(expected, sent_at) + 0.6, client_id


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
    """A cancel ends a running storm: nothing is published once the storm has seen it,
    the commands it had not handed to the broker are counted cancelled and reach nobody,
    and exactly the commands the ledger counts published reached their clients.

    How many go out before the cancel lands depends on how fast this machine runs the
    `status` and `cancel` processes, not on the storm; the storm cannot finish first,
    though: five clients that never answer (SIM00050-54) take its whole window, so it
    publishes 55 at most and then waits for them with 45 commands still to send.
    """
    fleet.serve()  # its collector records the answers the storm reads
    records = (tmp_path / "runs-a.jsonl", tmp_path / "runs-b.jsonl")
    simulators = (
        fleet.simulate(50, "--provision", "--record", str(records[0])),
        fleet.simulate(45, "--provision", "--first", "55", "--record", str(records[1])),
    )
    silent = sim_ids(55)[50:]
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(silent)
    fleet.register(silent)  # online, so they do take window slots
    targets = ids_file(tmp_path, sim_ids(100))
    storm = fleet.start_storm(
        "CCIM32_STARTCYCLE",
        "--clients-file",
        targets,
        "--rate",
        "20/s",
        "--max-in-flight",
        str(len(silent)),
        "--delivery-wait",
        "10m",  # longer than the test: the silent clients hold their slots throughout
    )
    try:
        storm.wait_line("storm storm-", timeout=20)
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        wait_for(lambda: fleet.status(storm_id)["published"] >= 10, 30, "10 published")
        cancelled = fleet.dispatcher("cancel", storm_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"{storm_id}: CCIM32_STARTCYCLE on 100 client(s): cancelled (" in cancelled.stdout
        assert storm.proc.wait(timeout=30) == 1, storm.output
    finally:
        storm.terminate()
    status = fleet.status(storm_id)
    assert status["state"] == "cancelled" and "cancel" in status["reason"]
    published = status["published"]
    assert 10 <= published <= 55 and published + status["cancelled"] == 100, status
    sent = {
        client: command
        for client, (command, state) in storm_commands(fleet, storm_id).items()
        if state != "cancelled"
    }
    assert len(sent) == published
    # What reached a client is exactly what the ledger counts published: the answering
    # clients ran it once, a silent one holds it in its queue, the rest got nothing.
    answering = {c: command for c, command in sent.items() if c not in silent}
    wait_for(lambda: answering.keys() <= runs_of(records).keys(), 30, "the published runs")
    for simulator in simulators:  # a delivery still in hand goes back to its queue
        simulator.terminate(timeout=30)
    assert runs_of(records) == {c: [command] for c, command in answering.items()}
    queued = {c: n for c, n in queue_depths(fleet.url, sim_ids(100)).items() if n}
    assert queued == {c: 1 for c in silent if c in sent}
    assert status["rate_per_second"] is None and status["eta_s"] is None
    # Its last progress line counts the cancelled commands apart from those it published.
    last = [line for line in storm.lines if "% published " in line][-1]
    assert f"published {published}/{published}  " in last, last
    assert f"cancelled {status['cancelled']}  " in last, last


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
        # Both figures are rounded to 0.1 in the JSON, so the ETA lies between what the
        # rate's rounding bounds give.
        rate = running["rate_per_second"]
        assert rest / (rate + 0.05) - 0.05 <= running["eta_s"] <= rest / (rate - 0.05) + 0.05
        shown = fleet.dispatcher("status", storm_id, "--once")
        assert re.search(r"settling \d+/s  eta \d+s \(average", shown.stdout), shown.stdout
    finally:
        storm.terminate()  # SIGTERM cancels it
    assert fleet.status(storm_id)["eta_s"] is None


def test_status_after_a_dispatcher_restart_and_resume(fleet: Fleet, tmp_path: Path) -> None:
    """A storm whose dispatcher dies shows ``interrupted`` with what it sent and what not;
    ``resume`` sends the rest with the same ids, and nobody runs a command twice.

    Five clients that never answer (SIM00030-34, until the test starts their agents)
    take the storm's whole window, so it is still running when it is killed, however
    long this machine takes to see it publish.
    """
    fleet.serve()
    records = tuple(tmp_path / f"runs-{n}.jsonl" for n in range(3))
    simulators = [
        fleet.simulate(30, "--provision", "--record", str(records[0])),
        fleet.simulate(25, "--provision", "--first", "35", "--record", str(records[1])),
    ]
    silent = sim_ids(35)[30:]
    answering = set(sim_ids(60)) - set(silent)
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(silent)
    fleet.register(silent)
    targets = ids_file(tmp_path, sim_ids(60))
    storm = fleet.start_storm(
        "CCIM32_STARTCYCLE",
        "--clients-file",
        targets,
        "--rate",
        "20/s",
        "--max-in-flight",
        str(len(silent)),
        "--delivery-wait",
        "10m",
    )
    storm.wait_line("storm storm-", timeout=20)
    storm_id = storm_id_of(storm.lines)
    assert storm_id is not None, storm.output
    wait_for(lambda: fleet.status(storm_id)["published"] >= 10, 30, "10 published")
    storm.proc.send_signal(signal.SIGKILL)  # the dispatcher dies mid-storm
    storm.kill()
    status = fleet.status(storm_id)
    assert status["state"] == "interrupted"
    sent, unsent = status["published"], status["unsent"]
    assert 10 <= sent <= 35 and sent + unsent == 60, status
    shown = fleet.dispatcher("status", storm_id).stdout
    confirmed = re.search(r"(\d+) command\(s\) were confirmed sent, (\d+) were not", shown)
    assert confirmed is not None, shown
    assert int(confirmed[1]) >= sent and int(confirmed[1]) + int(confirmed[2]) == 60, shown
    # A command confirmed just before the kill may be written down only by its client's
    # ack: the ledger catches up with what ran, and nothing it counts sent did not run.
    wait_for(
        lambda: sent_to(fleet, storm_id, answering) == ran_commands(records),
        30,
        "the ledger to count sent exactly the commands that ran",
    )
    # The silent clients come back, and get what was sent to them before the kill.
    simulators.append(fleet.simulate(5, "--first", "30", "--record", str(records[2])))
    resumed = fleet.dispatcher("resume", storm_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: len(runs_of(records)) == 60, 30, "60 clients' runs")
    wait_for(lambda: fleet.status(storm_id)["acked"] == 60, 30, "60 acks")
    final = fleet.status(storm_id)
    assert final["state"] == "done", final
    for simulator in simulators:  # a delivery still in hand goes back to its queue
        simulator.terminate(timeout=30)
    done = runs_of(records)
    assert sorted(done) == sim_ids(60)
    assert all(len(v) == 1 for v in done.values()), "resumed: nobody ran it twice"


def test_offline_clients_do_not_stall_the_window(fleet: Fleet, tmp_path: Path) -> None:
    """Clients the registry knows to be offline never take a window slot, and registered
    clients that do not answer give theirs up after the delivery wait. A storm that
    stalled on either would not end: each storm below must end, however slow the machine.
    """
    fleet.serve()  # its collector records the answers the storm reads
    online, silent, stale = sim_ids(20), sim_ids(5, "MUTE"), sim_ids(5, "STALE")
    fleet.simulate(20, "--provision")
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(silent + stale)
    fleet.register(online + silent)  # registered and recently heard from: "online"
    fleet.register(stale, age=3600)  # not heard from for an hour: offline
    window = ("--max-in-flight", "3")
    # A slot taken by a stale client would be held for the whole (endless) delivery wait.
    targets = ids_file(tmp_path, online + stale)
    code, outcome = fleet.storm(
        "CCIM32_STARTCYCLE", "--clients-file", targets, *window, "--delivery-wait", "1h"
    )
    assert code == 0, outcome
    assert (outcome["acked"], outcome["pending_offline"]) == (20, 5)
    # The silent clients come first and fill the window, until their delivery wait ends.
    targets = ids_file(tmp_path, silent + online)
    code, outcome = fleet.storm(
        "CQMGR32_STARTCYCLE", "--clients-file", targets, *window, "--delivery-wait", "0.5s"
    )
    assert code == 0, outcome
    assert (outcome["acked"], outcome["pending_offline"]) == (20, 5)
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
