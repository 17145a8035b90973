"""The collector killed mid-storm loses no ack: the ack queue is durable.

``setevnt-dispatcher serve`` is SIGKILLed twice during a storm: once briefly, once until
the storm is over, so that the acks pile up in ``setevnt.acks`` with nobody reading. The
storm learns its answers from the ledger the collector writes, so meanwhile it sees none
and ends with those commands ``pending-offline`` after its delivery wait. A restarted
collector must record every command's final status over that verdict and leave the
queue empty.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker import topology
from tests.faults.harness import AckTap, finished_runs, start_storm, wait_finished
from tests.faults.tally import ledger, run_records, tally
from tests.integration.fleet import Fleet, storm_id_of
from tests.integration.helpers import Process, queue_depth, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLIENTS = 500
# Slow enough that a restarted collector is up, and killed again, well before the storm
# is over, on a loaded machine too (a collector's start took seconds there).
RATE = "50/s"


def test_a_collector_killed_during_a_storm_loses_no_ack(amqp_url: str, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"SIM{n:05d}\n" for n in range(CLIENTS)))
    fleet = Fleet(amqp_url, tmp_path)
    tap = AckTap(amqp_url)
    storm: Process | None = None

    def collector() -> Process:
        return fleet.serve()

    try:
        service = collector()
        fleet.simulate(CLIENTS, "--record", str(record))  # provisioned by the service
        storm = start_storm(fleet, targets, "--rate", RATE, "--delivery-wait", "5s")
        wait_finished(record, CLIENTS // 3, 30)
        service.kill()  # SIGKILL: whatever it held unacknowledged goes back to the queue
        time.sleep(1.0)
        held_first = queue_depth(amqp_url, topology.ACK_QUEUE)
        service = collector()
        wait_finished(record, 2 * CLIENTS // 3, 30)
        service.kill()  # and down until the storm is over
        killed_at = finished_runs(record)
        assert storm.proc.wait(timeout=60) == 0, storm.output[-3000:]
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        planned = set(ledger(fleet.db, storm_id).planned)
        finals = tap.wait_finals(planned, timeout=30)  # the fleet answered everything
        held_second = queue_depth(amqp_url, topology.ACK_QUEUE)
        restarted = time.monotonic()
        collector()
        up_after = time.monotonic() - restarted
        wait_for(
            lambda: len(ledger(fleet.db, storm_id).finals()) == CLIENTS,
            30,
            "the restarted collector to record every outcome",
        )
        recorded_after = time.monotonic() - restarted
        wait_for(lambda: queue_depth(amqp_url, topology.ACK_QUEUE) == 0, 15, "an empty queue")
    finally:
        if storm is not None:
            storm.terminate()
        fleet.stop()
        tap.close()
    storm_view = ledger(fleet.db, storm_id)
    collected = ledger(fleet.db, storm_id)
    result = (
        tally(
            f"collector SIGKILLed twice during a storm of {CLIENTS} clients",
            sent=storm_view.planned,
            confirmed=storm_view.confirmed,
            acked=collected.finals(),  # what the collectors recorded, nothing else
            runs=run_records(record),
            duplicate_acks=tap.finals()[1],
        )
        .with_notes(
            acks_in_the_queue_1_s_after_the_first_kill=held_first,
            acks_waiting_for_the_collector_after_the_storm=f"{held_second} "
            f"(second kill after {killed_at} runs)",
            restarted_collector=f"consuming after {up_after:.1f} s, every outcome recorded after "
            f"{recorded_after:.1f} s",
            ack_stream_agrees=finals == collected.finals(),
        )
        .show()
    )
    assert held_second > 0, "the second kill left acks waiting: the test proved something"
    assert (result.sent, result.confirmed, result.acked) == (CLIENTS, CLIENTS, CLIENTS)
    assert (result.lost, result.duplicate_executions) == (0, 0), result.table()
    assert result.statuses == {"done": CLIENTS}
    assert collected.finals() == finals, "the ledger says what the agents said"
