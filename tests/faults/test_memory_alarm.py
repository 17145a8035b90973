"""A memory alarm blocks publishers, not consumers, and nothing is lost when it clears.

The broker's memory watermark is set so low that the alarm goes off, and restored to its
original value afterwards in every case (the alarm blocks every publisher on the
machine's broker). While it is on:

- a publisher is blocked, and gives up after its ``blocked_connection_timeout`` instead
  of hanging (its commands count as unsent);
- a simulated fleet started during the alarm consumes its queues and runs the commands
  queued before the alarm (consuming and publishing are separate connections); its acks
  wait, since publishing them is blocked.

After the alarm the unsent commands are published again with their ids, and everything
completes, each command exactly once (the blocked publishes may reach the queues after
all once the broker reads its sockets again: agents answer those from their journal).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker import topology
from broker.errors import ConnectionLost
from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.access import keys
from dispatcher.api.dispatcher import outgoing
from schemas.messages import Command
from tests.faults.harness import (
    AckTap,
    finished_runs,
    memory_alarm,
    memory_alarm_on,
    queue_depths,
    wait_finished,
)
from tests.faults.tally import run_records, tally
from tests.integration.fleet import Fleet
from tests.integration.helpers import Process

pytestmark = [pytest.mark.broker, pytest.mark.exclusive, pytest.mark.slow]

CLIENTS = 20
BLOCKED_TIMEOUT = 3.0
BLOCKED = 5  # commands a blocked publisher tries to send


def test_a_memory_alarm_blocks_publishers_and_agents_keep_consuming(
    amqp_url: str, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    clients = [f"SIM{n:05d}" for n in range(CLIENTS)]
    fleet = Fleet(amqp_url, tmp_path)
    tap = AckTap(amqp_url)
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(clients)
        first = dispatcher.commands(clients, ["CCIM32_STARTCYCLE"])
        queued = dispatcher.send(first)  # before the alarm
        then = dispatcher.commands(clients[:BLOCKED], ["CQMGR32_CLOSE"])
        later = [outgoing(c) for c in then]
    commands = {c.command_id: c for c in first + then}
    blocked = BrokerSettings(
        url=amqp_url, blocked_connection_timeout=BLOCKED_TIMEOUT, connection_name="faults-blocked"
    )
    unsent: list[Outgoing] = []
    try:
        with memory_alarm() as clear:
            alarm_on = time.time()
            started = time.monotonic()
            with (
                pytest.raises(ConnectionLost, match=r"[Bb]locked") as refused,
                ConfirmingPublisher(blocked, attempts=1, stamp=keys.command_stamp()) as publisher,
            ):
                publisher.publish(later)
            blocked_for = time.monotonic() - started
            unsent = list(refused.value.unsent)
            fleet_process = fleet.simulate(CLIENTS, "--record", str(record))  # consumes anyway
            wait_finished(record, CLIENTS, 20)
            ran_during = finished_runs(record)
            acks_during = len(tap.finals()[0])
            still_on = memory_alarm_on()
            alarm_off = time.time()  # restoring the watermark now
            clear()
        with ConfirmingPublisher(BrokerSettings(url=amqp_url), stamp=keys.command_stamp()) as p:
            resent = p.publish(unsent)
        sent = [r.command_id for r in queued] + [m.key for m in later]
        finals = tap.wait_finals(
            set(sent),
            timeout=60,
            alive=[fleet_process],
            explain=lambda missing: explain(missing, commands, record, amqp_url, fleet_process),
        )
        completed_after = max(r.at for r in tap.received()) - alarm_off
    finally:
        fleet.stop()
        tap.close()
    runs = run_records(record)
    result = (
        tally(
            f"memory alarm: {CLIENTS} commands queued before it, {BLOCKED} publishes blocked",
            sent=sent,
            confirmed=[r.command_id for r in queued if r.sent]
            + [k for k, o in resent.items() if o is Outcome.SENT],
            acked=finals,
            runs=runs,
            duplicate_acks=tap.finals()[1],
        )
        .with_notes(
            blocked_publisher=f"gave up after {blocked_for:.1f} s "
            f"(blocked_connection_timeout {BLOCKED_TIMEOUT:g} s); {len(unsent)} unsent, "
            "published again after the alarm",
            during_the_alarm=f"{ran_during} runs finished, {acks_during} acks got through "
            f"(alarm on for {alarm_off - alarm_on:.1f} s)",
            everything_answered=f"{completed_after:.1f} s after the watermark was restored (the "
            "broker notices at its next memory check)",
        )
        .show()
    )
    assert BLOCKED_TIMEOUT <= blocked_for <= BLOCKED_TIMEOUT + 3, "blocked, then gave up"
    assert [m.key for m in unsent] == [m.key for m in later]
    assert still_on, "the commands ran while the alarm was still on"
    assert ran_during >= CLIENTS
    during = [r for r in runs if r["phase"] == "finish" and alarm_on <= r["t"] <= alarm_off]
    assert {r["command_id"] for r in during} == {r.command_id for r in queued}
    assert (result.lost, result.duplicate_executions) == (0, 0), result.table()
    assert result.statuses == {"done": CLIENTS + BLOCKED}
    assert result.confirmed == CLIENTS + BLOCKED


def explain(
    missing: list[str], commands: dict[str, Command], record: Path, url: str, fleet: Process
) -> str:
    """Where the commands without a final ack are: their runs, their queues, the fleet."""
    runs = run_records(record)
    lines = []
    for command_id in missing:
        command = commands[command_id]
        phases = [r["phase"] for r in runs if r.get("command_id") == command_id]
        lines.append(f"  {command.client_id} {command.event_name} {command_id}: runs {phases}")
    queues = sorted({topology.client_queue(commands[c].client_id) for c in missing})
    lines += [f"  {queue}: {depth}" for queue, depth in queue_depths(url, queues).items()]
    lines.append(f"  memory alarm on: {memory_alarm_on()}")
    return "\n".join(lines) + "\nsimulator output (tail):\n" + "\n".join(fleet.lines[-40:])
