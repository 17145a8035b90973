"""The broker restarted mid-storm (``rabbitmqctl stop_app`` / ``start_app``) loses nothing.

Storm commands are persistent, so what the broker confirmed before it stopped is still
in the durable client queues when it comes back; what was in flight unconfirmed is
published again by the storm (same command ids). The simulated fleet, the collector and
the storm all reconnect by themselves. Some targets run no agent during the storm: their
commands wait in their queues through the restart, where the test finds them before
their agents start. Measured: how long after ``start_app`` returned the fleet consumed
every queue again, and the first ack of a command delivered after the restart.

This restarts the machine's broker, which other tests share: the app is started again
in a ``finally`` and the test waits until ``await_startup``, the AMQP port and the
management API all answer before it leaves.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from tests.faults.harness import (
    AckTap,
    rabbitmqctl,
    restores_broker,
    start_storm,
    wait_finished,
)
from tests.faults.tally import ledger, run_records, tally
from tests.integration.fleet import Fleet, storm_id_of
from tests.integration.helpers import Process, queue_depth, wait_for

# 46 s here on a quiet broker: room for a busy one, whose stop_app alone took 7.6 s.
pytestmark = [pytest.mark.broker, pytest.mark.exclusive, pytest.mark.slow, pytest.mark.timeout(300)]

ONLINE, AWAY = 300, 50
# ~23 s of publishing, so the restart lands in the middle of it: stop_app alone took up
# to 7.6 s on a machine with a slow disk, and at 100/s the storm had finished by then.
RATE = "15/s"


def consuming(url: str, client_ids: list[str]) -> bool:
    """Does every client queue have its consumer again? (live, from the queues)"""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except (pika.exceptions.AMQPError, OSError):
        return False
    try:
        ch = connection.channel()
        return all(
            ch.queue_declare(topology.client_queue(c), passive=True).method.consumer_count
            for c in client_ids
        )
    except (pika.exceptions.AMQPError, OSError):
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_a_broker_restart_mid_storm_loses_nothing(amqp_url: str, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    online = [f"SIM{n:05d}" for n in range(ONLINE)]
    away = [f"AWAY{n:05d}" for n in range(AWAY)]
    order = [*online]
    for n, client in enumerate(away):  # spread over the storm's publishing order
        order.insert(n * (ONLINE + AWAY) // AWAY, client)
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"{c}\n" for c in order))
    fleet = Fleet(amqp_url, tmp_path)
    tap = AckTap(amqp_url)
    storm: Process | None = None
    try:
        with restores_broker():
            fleet.serve()
            with Dispatcher(amqp_url) as dispatcher:
                dispatcher.provision(away)  # their agents start after the restart
            fleet.simulate(ONLINE, "--record", str(record))  # provisioned by the service
            storm = start_storm(fleet, targets, "--rate", RATE, "--delivery-wait", "3s")
            wait_finished(record, ONLINE // 3, 30)
            stopping = time.time()
            rabbitmqctl("stop_app")
            stopped = time.time()
            rabbitmqctl("start_app")
            back = time.time()
        # (restores_broker waited for await_startup, the AMQP port, the management API)
        wait_for(lambda: consuming(amqp_url, online), 60, "the fleet to consume again")
        consuming_after = time.time() - back
        assert storm.proc.wait(timeout=90) == 0, storm.output[-3000:]
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        view = ledger(fleet.db, storm_id)
        before = {c for c, at in view.sent_at.items() if at <= stopping}
        client_of = dict(zip(view.planned, order, strict=True))
        kept = [client_of[c] for c in before if client_of[c] in away]
        queued = sum(queue_depth(amqp_url, topology.client_queue(c)) for c in kept)
        fleet.simulate(AWAY, "--record", str(record), prefix="AWAY")
        finals = tap.wait_finals(set(view.planned), timeout=60)
        wait_for(lambda: len(ledger(fleet.db, storm_id).finals()) == len(order), 60, "ledger")
    finally:
        if storm is not None:
            storm.terminate()
        fleet.stop()
        tap.close()
    fresh = [r.at - back for r in tap.received() if r.ack.received_at >= back]
    first_ack = min(fresh, default=float("nan"))
    after = {c for c, at in view.sent_at.items() if at >= back}
    unconfirmed = [int(n) for n in re.findall(r"(\d+) unconfirmed, retrying", storm.output)]
    result = (
        tally(
            f"broker restart (stop_app/start_app) during a storm of {ONLINE} clients + {AWAY} away",
            sent=view.planned,
            confirmed=view.confirmed,
            acked=finals,
            runs=run_records(record),
            duplicate_acks=tap.finals()[1],
        )
        .with_notes(
            broker_down=f"{back - stopping:.1f} s (stop_app {stopped - stopping:.1f} s, "
            f"start_app {back - stopped:.1f} s)",
            confirmed_before_the_stop=f"{len(before)}; of these, {queued} of {len(kept)} for away "
            "clients were found in their queues after the restart",
            storm_publisher=f"{len(unconfirmed)} failed attempts while the broker was away; "
            f"{max(unconfirmed, default=0)} unconfirmed commands when it lost the broker, "
            "published again",
            confirmed_after_the_restart=len(after),
            reconnect_time=f"fleet consuming every queue {consuming_after:.1f} s after start_app "
            f"returned; first ack of a command delivered after the restart at +{first_ack:.1f} s",
        )
        .show()
    )
    assert kept, "some away clients' commands were confirmed before the stop"
    assert queued == len(kept), "confirmed persistent commands survived the restart"
    assert after, "the storm went on publishing after the restart"
    assert fresh, "the fleet answered commands after the restart"
    total = ONLINE + AWAY
    assert (result.sent, result.confirmed, result.acked) == (total, total, total)
    assert (result.lost, result.duplicate_executions) == (0, 0), result.table()
    assert result.statuses == {"done": total}
