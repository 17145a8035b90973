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
from tests.integration.fleet import Fleet, storm_id_of
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
    assert (result.sent, result.confirmed, result.acked) == (CLIENTS, CLIENTS, CLIENTS)
    assert (result.lost, result.duplicate_executions, false_failures) == (0, 0, 0)
    assert result.statuses == {"done": CLIENTS}
