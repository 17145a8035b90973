"""A storm over a 3-node RabbitMQ cluster against the same storm on one node, in one run.

Both brokers are the bench's own (bench/node.py, bench/cluster.py), started one after the
other so that they never share the machine: first the single node, then the cluster.
Each gets a simulated fleet of ``--clients`` (provisioned by the dispatcher service, so on
the cluster their queues are spread over the nodes), one cold storm, then ``--rounds``
persistent storms over every client, run as an operator runs them. The figures are the
medians of each broker's storms after the cold one, and their ratio; each of those must
have every command acked within 30 s. The cold storm is the first message each queue
ever gets, and the broker creates its queue index on disk meanwhile: it is reported
(``cold``) and not counted, as bench/storm.py warms up before it times anything.

    python bench/cluster_storm.py [--clients 10000] [--rounds 3] [--nodes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import start_cluster
from bench.common import scratch_vhost, stop_cleanly_on_sigterm, stop_process
from bench.machine import Machine
from bench.node import own_node
from bench.storm import BIN, code_path, code_version, run_storm, scalar, start, wait_until
from broker.management import Management
from broker.topology import CLIENT_QUEUE_PREFIX

ACKED_WITHIN = 30.0


@dataclass(frozen=True)
class Broker:
    """Where a fleet runs: every node's AMQP URL for the vhost, and one management API."""

    kind: str
    url: str
    management_url: str
    vhost: str


@contextlib.contextmanager
def single_node() -> Iterator[Broker]:
    with own_node() as node:
        where = {"amqp_address": node.amqp_address, "management_url": node.management_url}
        with scratch_vhost("setevnt-bench-cluster", **where) as url:
            yield Broker("single", url, node.management_url, _vhost(url))


@contextlib.contextmanager
def cluster(size: int) -> Iterator[Broker]:
    started = start_cluster(size)
    try:
        first = started.nodes[0]
        address = f"127.0.0.1:{first.amqp_port}"
        where = {"amqp_address": address, "management_url": first.management_url}
        with scratch_vhost("setevnt-bench-cluster", **where) as url:
            vhost = _vhost(url)
            urls = ",".join(
                f"amqp://guest:guest@127.0.0.1:{n.amqp_port}/{urllib.parse.quote(vhost, safe='')}"
                for n in started.nodes
            )
            yield Broker(f"cluster-{size}", urls, first.management_url, vhost)
    finally:
        started.close()


def _vhost(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/"))


def storms(broker: Broker, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A fleet on ``broker``, then a cold storm and ``args.rounds`` storms over it."""
    db = work / f"{broker.kind}.db"
    env = {
        "SETEVNT_AMQP_URL": broker.url,
        "SETEVNT_MANAGEMENT_URL": broker.management_url,
        "SETEVNT_DB": str(db),
        "SETEVNT_TRUSTED_SENDERS": "guest",
        "PYTHONPATH": code_path(),
    }
    started = []
    try:
        serve = [str(BIN / "setevnt-dispatcher"), "serve", "--metrics-port", "0", "--unsigned"]
        started.append(start(serve, work / f"{broker.kind}-serve.log", env))
        wait_until(lambda: scalar(db, "SELECT count(*) FROM sqlite_master") > 0, 60, "serve")
        simulate = [str(BIN / "setevnt-agent"), "simulate", "--clients", str(args.clients)]
        simulate += ["--prefix", "BENCH"]
        log = work / f"{broker.kind}-simulate.log"
        started.append(start(simulate, log, env))
        wait_until(lambda: "clients consuming" in log.read_text(), 600, "the simulated fleet")
        spread = _spread(broker)
        print(f"bench: {broker.kind}: queues per node {spread}", file=sys.stderr, flush=True)
        cold, *runs = [
            run_storm(env, db, args, work / f"{broker.kind}-storm-{n}.log", Machine(), fast=False)
            for n in range(args.rounds + 1)
        ]
    finally:
        for proc in reversed(started):
            stop_process(proc, 30)
    rates = [float(r["enqueue_per_second"] or 0.0) for r in runs]
    acked = [float(r["all_acked_after_s"]) for r in runs]
    return {
        "storm_per_s": median(rates),
        "passes_per_s": rates,
        "all_acked_after_s": {"median": round(median(acked), 3), "worst": max(acked)},
        "states": sorted({str(r["state"]) for r in (cold, *runs)}),
        "queues_per_node": spread,
        "cold": {
            "storm_per_s": float(cold["enqueue_per_second"] or 0.0),
            "all_acked_after_s": float(cold["all_acked_after_s"]),
        },
    }


def _spread(broker: Broker) -> dict[str, int]:
    """How many of the fleet's queues each node holds."""
    api = Management(broker.management_url, "guest", "guest", timeout=60)
    quoted = urllib.parse.quote(broker.vhost, safe="")
    queues = api.call("GET", f"/queues/{quoted}?columns=name,node") or []
    return dict(Counter(q["node"] for q in queues if q["name"].startswith(CLIENT_QUEUE_PREFIX)))


def main() -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="storms per broker after the cold one (medians)"
    )
    parser.add_argument("--nodes", type=int, default=3, help="cluster size")
    parser.add_argument("--max-in-flight", default="100%")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="setevnt-bench-cluster-"))
    try:
        with single_node() as broker:
            single = storms(broker, args, work)
        with cluster(args.nodes) as broker:
            clustered = storms(broker, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = round(clustered["storm_per_s"] / single["storm_per_s"], 2)
    worst = max(single["all_acked_after_s"]["worst"], clustered["all_acked_after_s"]["worst"])
    result = {
        "bench": "cluster_storm",
        "code": code_version(),
        "clients": args.clients,
        "rounds": args.rounds,
        "single": single,
        f"cluster_{args.nodes}": clustered,
        "cluster_vs_single": ratio,
        "targets_met": worst <= ACKED_WITHIN,
    }
    print(json.dumps(result, sort_keys=True), flush=True)
    colds = clustered["cold"]["storm_per_s"], single["cold"]["storm_per_s"]
    print(
        f"cluster of {args.nodes}: {clustered['storm_per_s']:.0f}/s, single node: "
        f"{single['storm_per_s']:.0f}/s ({ratio}x); every ack within {worst:.1f} s "
        f"(cold storms, not counted: {colds[0]:.0f}/s and {colds[1]:.0f}/s)"
    )
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
