"""A cluster node SIGKILLed mid-storm and started again loses nothing and fails nothing.

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
from tests.cluster.conftest import vhost_url
from tests.faults.harness import finished_runs, start_storm, wait_finished
from tests.faults.tally import ledger, run_records, tally
from tests.integration.fleet import Fleet, runs, storm_id_of
from tests.integration.helpers import Process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 1_000
RATE = "40/s"  # ~25 s of publishing: the kill lands in the middle of it


def homes(cluster: Cluster, vhost: str) -> Counter[str]:
    quoted = urllib.parse.quote(vhost, safe="")
    found = management(cluster.running(), "GET", f"/queues/{quoted}?columns=name,node")
    return Counter(
        q["node"] for q in found if str(q["name"]).startswith(topology.CLIENT_QUEUE_PREFIX)
    )


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
    assert (result.sent, result.acked) == (CLIENTS, CLIENTS)
    # A publish the killed node had stored but not confirmed comes back nacked and is
    # parked; once the node is back, its client may run it from the queue before the storm
    # sends it again: answered, never confirmed. Only a parked command can be that.
    unconfirmed = set(finals) - view.confirmed
    assert len(unconfirmed) <= waited, sorted(unconfirmed)
    assert result.confirmed == CLIENTS - len(unconfirmed)
    assert (result.lost, result.duplicate_executions, false_failures) == (0, 0, 0)
    assert result.statuses == {"done": CLIENTS}


ONE_OFF_CLIENTS = 12


def test_a_one_off_to_a_queue_on_a_down_node_waits_and_runs_once_it_is_back(
    cluster: Cluster, cluster_vhost: str, tmp_path: Path
) -> None:
    """``setevnt`` to a client whose queue's node is down: not a failure, ``waiting-node``
    in the receipt and the ledger, nothing runs; the node back, the service sends it and
    the client runs it once. The simulated fleet and the service lose their connections
    to that node too, and move to the others."""
    record = tmp_path / "runs.jsonl"
    fleet = Fleet(vhost_url(cluster, cluster_vhost), tmp_path)
    fleet.env["SETEVNT_MANAGEMENT_URL"] = cluster.nodes[0].management_url
    try:
        serve = fleet.serve()
        fleet.simulate(ONE_OFF_CLIENTS, "--record", str(record), prefix="ONE")
        placed = client_homes(cluster, cluster_vhost)
        leader = ack_queue_leader(cluster, cluster_vhost)
        # Harshest: the ack queue's leader goes down with the client's queue (the records
        # of the send are refused until another leads), else the node with most queues.
        victim = max(
            cluster.nodes,
            key=lambda n: (
                n.name == leader and n.name in placed.values(),
                sum(h == n.name for h in placed.values()),
            ),
        )
        alive = next(n for n in cluster.nodes if n is not victim)
        client = min(c for c, home in placed.items() if home == victim.name)
        cluster.kill(victim)
        try:
            wait_for(lambda: cluster.running_nodes(alive) == 2, 60, "the node seen down")
            sent = fleet.setevnt("--client", client, "CCIM32_STARTCYCLE", "--json", "--ttl", "600")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            (row,) = [json.loads(line) for line in sent.stdout.splitlines()]
            assert row["status"] == "waiting-node", row
            command_id = row["command_id"]
            wait_for(
                lambda: ledger(fleet.db).statuses.get(command_id) == "waiting-node",
                60,
                f"the ledger's waiting-node row\n{serve.output[-4000:]}",
            )
            time.sleep(3)  # the service probes every 2 s: the queue stays unreachable
            assert ledger(fleet.db).statuses[command_id] == "waiting-node"
            assert client not in runs(record)
        finally:
            cluster.start(victim)
        wait_for(
            lambda: ledger(fleet.db).statuses.get(command_id) == "done",
            120,
            f"the command done once the node is back\n{serve.output[-4000:]}",
        )
        assert runs(record)[client] == [command_id]
    finally:
        fleet.stop()


def ack_queue_leader(cluster: Cluster, vhost: str) -> str:
    quoted = urllib.parse.quote(vhost, safe="")
    found = management(cluster.running(), "GET", f"/queues/{quoted}/{topology.ACK_QUEUE}")
    return str(found["leader"])


def client_homes(cluster: Cluster, vhost: str) -> dict[str, str]:
    """Client id -> the node its command queue lives on."""
    quoted = urllib.parse.quote(vhost, safe="")
    found = management(cluster.running(), "GET", f"/queues/{quoted}?columns=name,node")
    prefix = topology.CLIENT_QUEUE_PREFIX
    return {
        str(q["name"])[len(prefix) :]: str(q["node"])
        for q in found
        if str(q["name"]).startswith(prefix)
    }
