"""What one client queue and one agent cost a RabbitMQ node, for docs/capacity.md.

On a node of the bench's own (bench/node.py, never the machine's broker) it provisions
client queues in steps through `broker/provisioning.py`, reading the node's Erlang
processes, file descriptors, sockets, memory and data on disk after each step;
restarts the node's application (`rabbitmqctl stop_app; start_app`) after each step
and times the recovery; then opens agents' connections the way `broker/session.py`
does (one consuming: channel, prefetch, consumer on its client queue; one publishing:
channel in confirm mode) and reads the node again. Before the node starts, it times
the ledger's writes for a storm (bench/ledger_rates.py). Prints one JSON line, then
the same figures as readable lines.

    python -m bench.capacity_probe --queues 5000,10000,20000 --agents 1000

docs/capacity.md holds the figures and the sizing built on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from bench.common import stop_cleanly_on_sigterm
from bench.ledger_rates import ledger_rates
from bench.node import Node, ctl, own_node
from broker import topology
from broker.connection import close_quietly, open_blocking
from broker.errors import BrokerError
from broker.management import Management
from broker.provisioning import provision_clients
from broker.settings import BrokerSettings

READY_TIMEOUT = 900.0
FIELDS = ("proc_used", "fd_used", "sockets_used", "mem_rss", "disk_bytes")
# Memory the node's own breakdown gives to queues and to connections, summed per kind.
KINDS = {
    "mem_queue_procs": ("queue_procs",),
    "mem_connections": (
        "connection_readers",
        "connection_writers",
        "connection_channels",
        "connection_other",
    ),
    "mem_mgmt_metrics": ("mgmt_db", "metrics"),
    "mem_mnesia": ("mnesia",),
}
GC_ALL = "[erlang:garbage_collect(P) || P <- erlang:processes()], ok."


def client_ids(start: int, stop: int) -> list[str]:
    return [f"PC{number:07d}" for number in range(start, stop)]


def sample(node: Node) -> dict[str, int]:
    """The node's counters right now, after a garbage collection of every process.

    From ``rabbitmqctl status`` rather than the management API, whose node figures lag
    by one statistics interval; descriptors are counted in /proc, as the kernel sees them.
    """
    ctl(node, "eval", GC_ALL)
    status = json.loads(ctl(node, "status", "--formatter", "json"))
    memory = status["memory"]
    figures = {
        "proc_used": status["processes"]["used"],
        "proc_total": status["processes"]["limit"],
        "fd_used": len(os.listdir(f"/proc/{status['pid']}/fd")),
        "fd_total": node.fd_limit,
        "sockets_used": status["file_descriptors"]["sockets_used"],
        "sockets_total": status["file_descriptors"]["sockets_limit"],
        "mem_rss": memory["total"]["rss"],
        "mem_limit": status["vm_memory_high_watermark_limit"],
        "disk_bytes": _tree_bytes(node.home / "mnesia"),
    }
    for kind, parts in KINDS.items():
        figures[kind] = sum(memory[part] for part in parts)
    return {key: int(value) for key, value in figures.items()}


def _tree_bytes(top: Path) -> int:
    """What the node's data directory takes on disk (allocated blocks)."""
    return sum(p.lstat().st_blocks * 512 for p in top.rglob("*"))


def per_unit(before: dict[str, int], after: dict[str, int], units: int) -> dict[str, float]:
    """Each counter's growth per unit; memory and disk in KiB."""
    out = {}
    for key in FIELDS + tuple(KINDS):
        growth = (after[key] - before[key]) / units
        in_kib = key.startswith("mem_") or key == "disk_bytes"
        out[key] = round(growth / 1024, 1) if in_kib else round(growth, 2)
    return out


def declare_step(settings: BrokerSettings, start: int, stop: int) -> dict[str, float]:
    started = time.monotonic()
    provision_clients(settings, client_ids(start, stop), parallel=16, timeout=READY_TIMEOUT)
    seconds = time.monotonic() - started
    return {
        "queues": stop - start,
        "seconds": round(seconds, 2),
        "per_s": round((stop - start) / seconds),
    }


def restart(
    node: Node, management: Management, settings: BrokerSettings, queues: int
) -> dict[str, float]:
    """Stop and start the node's application; time until every queue is back and usable."""
    ctl(node, "stop_app")
    started = time.monotonic()
    ctl(node, "start_app", timeout=READY_TIMEOUT)
    start_app = time.monotonic() - started
    last = topology.client_queue(client_ids(queues - 1, queues)[0])
    deadline = started + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if _queue_count(management) >= queues and _declares_passively(settings, last):
                return {
                    "start_app_s": round(start_app, 2),
                    "ready_s": round(time.monotonic() - started, 2),
                }
        except (BrokerError, pika.exceptions.AMQPError, OSError):
            pass  # the node is still coming up: ask again
        time.sleep(0.5)
    raise SystemExit(f"capacity: {queues} queues not back within {READY_TIMEOUT:.0f} s")


def _queue_count(management: Management) -> int:
    totals = management.call("GET", "/overview?columns=object_totals")["object_totals"]
    return int(totals["queues"])


def _declares_passively(settings: BrokerSettings, queue: str) -> bool:
    connection = open_blocking(settings)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    finally:
        close_quietly(connection)


@contextmanager
def agent_connections(settings: BrokerSettings, count: int, *, consuming: bool) -> Iterator[float]:
    """Open ``count`` connections as an agent's session does; yields connections/s."""
    opened: list[pika.BlockingConnection] = []
    try:
        started = time.monotonic()
        for client_id in client_ids(0, count):
            connection = open_blocking(settings.named(f"capacity {client_id}"))
            opened.append(connection)
            channel = connection.channel()
            if consuming:
                channel.basic_qos(prefetch_count=1)
                channel.basic_consume(topology.client_queue(client_id), _never_called)
            else:
                channel.confirm_delivery()
        yield round(count / (time.monotonic() - started))
    finally:
        for connection in opened:
            close_quietly(connection)


def _never_called(*_args: Any) -> None:
    raise AssertionError("the probe's client queues stay empty")


def probe(node: Node, steps: list[int], agents: int) -> dict[str, Any]:
    # Long heartbeats: the probe does not pump its idle connections, yet the broker
    # still runs a connection's heartbeat processes, as for an agent.
    settings = replace(
        BrokerSettings.from_env(f"amqp://guest:guest@{node.amqp_address}/%2F"), heartbeat=600
    )
    management = Management(node.management_url, "guest", "guest", timeout=60)
    topology.declare_all(settings)
    empty = sample(node)
    result: dict[str, Any] = {
        "node": {
            key: empty[key] for key in ("proc_total", "fd_total", "sockets_total", "mem_limit")
        },
        "empty": empty,
    }
    result["node"]["version"] = management.call("GET", "/overview")["rabbitmq_version"]
    queues, before, rows = 0, empty, []
    for target in steps:
        declared = declare_step(settings, queues, target)
        after = sample(node)
        row: dict[str, Any] = {
            "queues": target,
            "declare": declared,
            "per_queue": per_unit(before, after, target - queues),
        }
        row["restart"] = restart(node, management, settings, target)
        row["after_restart"] = sample(node)
        row["per_queue_after_restart"] = per_unit(empty, row["after_restart"], target)
        rows.append(row)
        queues, before = target, row["after_restart"]
    result["steps"] = rows
    if agents:
        result["agents"] = agent_figures(settings, node, agents, before)
    return result


def agent_figures(
    settings: BrokerSettings, node: Node, agents: int, idle: dict[str, int]
) -> dict[str, Any]:
    with ExitStack() as stack:
        consuming_rate = stack.enter_context(agent_connections(settings, agents, consuming=True))
        consuming = sample(node)
        publishing_rate = stack.enter_context(agent_connections(settings, agents, consuming=False))
        both = sample(node)
    return {
        "agents": agents,
        "consuming_connection": per_unit(idle, consuming, agents),
        "publishing_connection": per_unit(consuming, both, agents),
        "agent": per_unit(idle, both, agents),
        "opened_per_s": {"consuming": consuming_rate, "publishing": publishing_rate},
        "with_agents": both,
    }


def readable(result: dict[str, Any]) -> Iterator[str]:
    node = result["node"]
    yield (
        f"node: RabbitMQ {node['version']}, fd limit {node['fd_total']}, "
        f"Erlang process limit {node['proc_total']}, "
        f"memory high watermark {node['mem_limit'] / 2**20:.0f} MiB"
    )
    for row in result["steps"]:
        unit, declare, back = row["per_queue"], row["declare"], row["restart"]
        yield (
            f"{row['queues']} queues: declared {declare['queues']} at {declare['per_s']}/s; "
            "per queue "
            f"{_unit_text(unit)}; "
            f"start_app {back['start_app_s']} s, all usable after {back['ready_s']} s"
        )
    if "agents" in result:
        agents = result["agents"]
        for kind in ("consuming_connection", "publishing_connection", "agent"):
            unit = agents[kind]
            yield (
                f"per {kind.replace('_', ' ')} ({agents['agents']}): "
                f"{_unit_text(unit)}, {unit['sockets_used']} sockets"
            )
        yield f"connections opened per s: {agents['opened_per_s']}"
    if "ledger" in result:
        ledger = result["ledger"]
        yield (
            f"SQLite ledger, {ledger['commands']} commands: "
            f"planned {ledger['planned_rows_per_s']}/s, "
            f"sent marks {ledger['sent_marks_per_s']}/s, answers {ledger['acks_per_s']}/s, "
            f"{ledger['bytes_per_command']} bytes per command"
        )


def _unit_text(unit: dict[str, float]) -> str:
    return (
        f"{unit['proc_used']} processes, {unit['fd_used']} fds, disk {unit['disk_bytes']} KiB, "
        f"RSS {unit['mem_rss']} KiB (queue processes {unit['mem_queue_procs']}, "
        f"connections {unit['mem_connections']}, management {unit['mem_mgmt_metrics']})"
    )


def main() -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--queues", default="5000,10000", help="cumulative queue counts, comma-separated"
    )
    parser.add_argument(
        "--ledger",
        type=int,
        default=100_000,
        help="commands for the ledger's write rates (0: skip)",
    )
    parser.add_argument(
        "--agents", type=int, default=1000, help="agents to connect (2 connections each)"
    )
    args = parser.parse_args()
    steps = [int(part) for part in args.queues.split(",")]
    if steps != sorted(set(steps)) or steps[0] < 1 or args.agents > steps[-1]:
        parser.error("--queues must rise, and --agents may not exceed the last count")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per agent here
    ledger = ledger_rates(args.ledger) if args.ledger else None
    with own_node() as node:
        result = probe(node, steps, args.agents)
    if ledger is not None:
        result["ledger"] = ledger
    print(json.dumps(result, sort_keys=True))
    for line in readable(result):
        print(line)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
