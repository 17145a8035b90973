"""A cluster node SIGKILLed mid-storm and started again loses nothing and fails nothing;
a one-off for a client whose queue is on a node that is down waits for it, then runs once.

Three private nodes; the dispatcher service and a simulated fleet of 1,000 clients are
given every node's URL; the service provisions the client queues, which the placement
policy spreads over the nodes; the shared queues are quorum queues. During the storm one
node is SIGKILLed (no shutdown) and started again on its data. While it is down:
commands already in its queues wait there; publishes to its queues come back unroutable
or nacked, and the storm parks them ``waiting-node`` until the node is back, then sends
them again (same ids); connections that were on it move to the other nodes; the fleet's
consumers of its queues are cancelled and come back with it. Counted: lost, duplicate
executions (the simulated backend's record), false failures (the ledger's statuses).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from bench.cluster import Cluster, management
from broker import topology
from dispatcher.api.dispatcher import Dispatcher
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from tests.cluster.conftest import vhost_url
from tests.faults.harness import finished_runs, start_storm, wait_finished
from tests.faults.tally import ledger, run_records, tally
from tests.integration.fleet import Fleet, runs, storm_id_of
from tests.integration.helpers import Process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 1_000
RATE = "40/s"  # ~25 s of publishing: the kill lands in the middle of it


def placed(cluster: Cluster, vhost: str) -> dict[str, str]:
    """Client queue -> the node it lives on."""
    quoted = urllib.parse.quote(vhost, safe="")
    found = management(cluster.running(), "GET", f"/queues/{quoted}?columns=name,node")
    return {
        str(q["name"]): str(q["node"])
        for q in found
        if str(q["name"]).startswith(topology.CLIENT_QUEUE_PREFIX)
    }


def homes(cluster: Cluster, vhost: str) -> Counter[str]:
    return Counter(placed(cluster, vhost).values())


def status_of(fleet: Fleet, command_id: str) -> str | None:
    with Ledger(DbSettings(str(fleet.db))) as ledger:
        row = ledger.command(command_id)
    return row.status if row is not None else None


def test_a_one_off_for_a_queue_on_a_stopped_node_waits_and_is_sent_once_it_is_back(
    cluster: Cluster, cluster_vhost: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node of a client's queue is down: a one-off ``setevnt`` for that client is
    ``waiting-node`` (exit 0, never failed, in the ledger too); once the node is back the
    service sends it again, with its id, and the client runs it exactly once."""
    record = tmp_path / "runs.jsonl"
    fleet = Fleet(vhost_url(cluster, cluster_vhost), tmp_path)
    fleet.env["SETEVNT_MANAGEMENT_URL"] = cluster.nodes[0].management_url
    # The provisioning below runs here: it sets the placement policy through this API.
    monkeypatch.setenv("SETEVNT_MANAGEMENT_URL", cluster.nodes[0].management_url)
    victim = cluster.nodes[2]
    try:
        served = fleet.serve()
        # One declare at a time: the placement policy sees each queue before the next.
        with Dispatcher(fleet.url) as dispatcher:
            for n in range(6):
                dispatcher.provision([f"ONE{n:05d}"])
        fleet.simulate(6, "--record", str(record), prefix="ONE")
        # The service provisions again on each hello: done before the node goes.
        wait_for(
            lambda: sum(bool(c["provisioned"]) for c in fleet.clients()) == 6,
            30,
            "the fleet's hellos provisioned",
        )
        # The node (not the first: the service asks its management API) holding most queues.
        on = Counter(placed(cluster, cluster_vhost).values())
        victim = max(cluster.nodes[1:], key=lambda n: on[n.name])
        client = next(
            q.removeprefix(topology.CLIENT_QUEUE_PREFIX)
            for q, node in sorted(placed(cluster, cluster_vhost).items())
            if node == victim.name
        )
        cluster.kill(victim)
        wait_for(lambda: cluster.running_nodes(cluster.nodes[0]) == 2, 60, "the node seen down")
        done = fleet.setevnt("--client", client, "CCIM32_STARTCYCLE", "--json", "--ttl", "600")
        assert done.returncode == 0, done.stdout + done.stderr
        (row,) = [json.loads(line) for line in done.stdout.splitlines()]
        assert row["status"] == "waiting-node", row
        assert "queue is down" in row["detail"]
        assert "wait for the broker node" not in done.stderr  # --json: the rows say it
        command_id = str(row["command_id"])
        try:  # the service's collector may be reconnecting from the node that went
            wait_for(lambda: status_of(fleet, command_id) == "waiting-node", 60, "ledger row")
        except AssertionError:
            print(f"ledger: {status_of(fleet, command_id)}; serve said:\n{served.output[-4000:]}")
            raise
        time.sleep(3)  # a re-send round or more while the node is still down
        assert status_of(fleet, command_id) == "waiting-node"
        assert command_id not in runs(record).get(client, [])
        cluster.start(victim)
        wait_for(lambda: status_of(fleet, command_id) == "done", 120, "the command's ack")
        time.sleep(3)  # a duplicate would show up by now
    finally:
        fleet.stop()
        if victim.process is not None and victim.process.poll() is not None:
            cluster.start(victim)  # the module's other tests need all three nodes
    starts = [
        r for r in run_records(record) if r["command_id"] == command_id and r["phase"] == "start"
    ]
    assert len(starts) == 1, starts
    assert starts[0]["client_id"] == client


def test_a_node_killed_mid_storm_loses_and_fails_nothing(
    cluster: Cluster, cluster_vhost: str, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    clients = [f"SIM{n:05d}" for n in range(CLIENTS)]
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"{c}\n" for c in clients))
    fleet = Fleet(vhost_url(cluster, cluster_vhost), tmp_path)
    fleet.env["SETEVNT_MANAGEMENT_URL"] = cluster.nodes[0].management_url
    victim = cluster.nodes[2]
    storm: Process | None = None
    try:
        fleet.serve()
        fleet.simulate(CLIENTS, "--record", str(record))
        spread = homes(cluster, cluster_vhost)
        assert sum(spread.values()) == CLIENTS and len(spread) == 3, spread
        storm = start_storm(fleet, targets, "--rate", RATE, "--delivery-wait", "120s")
        wait_finished(record, CLIENTS // 4, 60)
        killed = time.time()
        cluster.kill(victim)
        runs_at_kill = finished_runs(record)
        time.sleep(8)  # the storm goes on publishing into a cluster missing a node
        cluster.start(victim)
        back = time.time()
        assert storm.proc.wait(timeout=300) == 0, storm.output[-3000:]
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        wait_for(
            lambda: len(ledger(fleet.db, storm_id).finals()) == CLIENTS,
            120,
            "every command's final answer in the ledger",
        )
        all_acked = time.time()
    finally:
        if storm is not None:
            storm.terminate()
        fleet.stop()
    view = ledger(fleet.db, storm_id)
    finals = view.finals()
    parked = [int(n) for n in re.findall(r"(\d+) command\(s\) found their queue", storm.output)]
    waited = sum(parked)
    false_failures = sum(n for status, n in Counter(finals.values()).items() if status != "done")
    result = (
        tally(
            f"cluster node SIGKILLed mid-storm, {CLIENTS} simulated clients over 3 nodes",
            sent=view.planned,
            confirmed=view.confirmed,
            acked=finals,
            runs=run_records(record),
        )
        .with_notes(
            placement=", ".join(f"{n}: {c}" for n, c in sorted(spread.items())),
            waiting_node=f"{waited} command(s) parked while the node was down, sent again",
            false_failures=false_failures,
            node_down=f"{back - killed:.1f} s (SIGKILL after {runs_at_kill} runs, restart "
            "on its data)",
            every_command_acked=f"{all_acked - back:.1f} s after the node was back",
        )
        .show()
    )
    print(
        "| sent | confirmed | waiting-node | acked | lost | duplicates | false failures |\n"
        f"| {result.sent} | {result.confirmed} | {waited} | {result.acked} | {result.lost} "
        f"| {result.duplicate_executions} | {false_failures} |",
        flush=True,
    )
    assert waited > 0, "the storm published to the killed node's queues while it was down"
    assert (result.sent, result.confirmed, result.acked) == (CLIENTS, CLIENTS, CLIENTS)
    assert (result.lost, result.duplicate_executions, false_failures) == (0, 0, 0)
    assert result.statuses == {"done": CLIENTS}
