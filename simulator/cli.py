"""``setevnt-agent simulate``: the fleet simulator's command line (see simulator.fleet)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from types import FrameType

from agent.config import PUBLIC_KEY_ENV
from broker.settings import BrokerSettings
from schemas import cli


def default_connections(clients: int) -> int:
    """One lane per ~1,000 clients, at most 16: enough parallelism for one I/O thread."""
    return max(1, min(16, math.ceil(clients / 1000)))


def parse_groups(text: str | None) -> tuple[str, ...]:
    return tuple(g for g in (text or "").split(",") if g)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``setevnt-agent simulate`` subcommand."""
    simulate = sub.add_parser(
        "simulate", help="run N simulated clients over K connections (demos, load tests)"
    )
    simulate.add_argument(
        "--clients", type=int, required=True, metavar="N", help="how many clients to simulate"
    )
    simulate.add_argument(
        "--connections", type=int, metavar="K", help="default: one per 1,000 clients, <= 16"
    )
    simulate.add_argument("--url", help="AMQP URL (default: $SETEVNT_AMQP_URL or local broker)")
    simulate.add_argument("--prefix", default="SIM", help="client ids are PREFIX00000, ...")
    simulate.add_argument("--first", type=int, default=0, help="number of the first client")
    simulate.add_argument("--groups", help="comma-separated groups every client belongs to")
    simulate.add_argument(
        "--platform", default="nt", choices=("nt", "win9x"), help="reported in heartbeats"
    )
    simulate.add_argument(
        "--duration",
        type=cli.duration,
        default=0.02,
        metavar="DURATION",
        help="each run's length (default 20ms)",
    )
    simulate.add_argument("--failure-rate", type=float, default=0.0, help="0.0 .. 1.0")
    simulate.add_argument("--record", help="append a JSON line per run start/finish here")
    simulate.add_argument("--seed", type=int, help="seed for the failure draws")
    simulate.add_argument(
        "--hello-interval",
        type=cli.duration,
        default=60.0,
        metavar="DURATION",
        help="between heartbeats (default 60s)",
    )
    simulate.add_argument("--workers", type=int, default=64, help="signalling threads")
    simulate.add_argument(
        "--dispatcher-public-key",
        help=f"verify command signatures with this key (default: ${PUBLIC_KEY_ENV})",
    )
    simulate.add_argument("--copylist-version", metavar="V", help="reported in heartbeats")
    simulate.add_argument(
        "--upgrade-to",
        metavar="V",
        help="the CopyListVersion a client reports once it ran the upgrade event",
    )
    simulate.add_argument(
        "--upgrade-event", help="the event that upgrades a client (default: CLISETUP_STARTCYCLE)"
    )
    simulate.add_argument(
        "--provision",
        action="store_true",
        help="declare the clients' queues here instead of waiting for the dispatcher",
    )


def main(args: argparse.Namespace) -> int:
    # Imported here: the production agent's CLI loads none of the simulator.
    from simulator.fleet import Simulation, SimulationSettings
    from simulator.setup import UPGRADE_EVENT

    try:
        settings = SimulationSettings(
            clients=args.clients,
            connections=args.connections or default_connections(args.clients),
            prefix=args.prefix,
            first=args.first,
            groups=parse_groups(args.groups),
            platform=args.platform,
            duration=args.duration,
            failure_rate=args.failure_rate,
            record=args.record,
            seed=args.seed,
            hello_interval=args.hello_interval,
            workers=args.workers,
            provision=args.provision,
            broker=BrokerSettings.from_env(args.url),
            public_key=args.dispatcher_public_key or os.environ.get(PUBLIC_KEY_ENV),
            copylist_version=args.copylist_version,
            upgrade_to=args.upgrade_to,
            upgrade_event=args.upgrade_event or UPGRADE_EVENT,
        )
        simulation = Simulation(settings)
    except ValueError as exc:  # includes bad ids, groups and backend options
        print(f"setevnt-agent simulate: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        simulation.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    simulation.run()
    if simulation.error is not None:
        print(f"setevnt-agent simulate: broker: {simulation.error}", file=sys.stderr)
        return 3
    return 0
