"""``setevnt-agent``: the client-side daemon.

setevnt-agent run [--config agent.toml] [--client ID] [--url URL] [--backend KIND]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent.backends import BackendConfigError, make_backend
from agent.config import ConfigError, load
from agent.daemon import Agent
from agent.handler import Handler
from agent.journal import Journal
from broker.errors import BrokerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="setevnt-agent", description="setevnt client agent")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume this client's commands until stopped")
    run.add_argument("--config", help="agent TOML file (see deploy/agent.example.toml)")
    run.add_argument("--client", help="client id (overrides $SETEVNT_CLIENT_ID and the file)")
    run.add_argument("--url", help="AMQP URL (overrides $SETEVNT_AMQP_URL and the file)")
    run.add_argument("--backend", help="signal backend: exec, signal, file, win32-event, simulated")
    run.add_argument("--journal", help="path of the completed-commands journal")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    overrides = {
        key: value
        for key, value in (
            ("client_id", args.client),
            ("url", args.url),
            ("backend", args.backend),
            ("journal", args.journal),
        )
        if value
    }
    try:
        config = load(args.config, overrides=overrides)
        backend = make_backend(config.backend, config.backend_options)
        handler = Handler(config, backend, Journal(config.journal))
    except (ConfigError, BackendConfigError) as exc:
        print(f"setevnt-agent: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config, handler)
    agent.install_signal_handlers()
    try:
        agent.run()
    except BrokerError as exc:
        print(f"setevnt-agent: broker: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
