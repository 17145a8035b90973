"""``setevnt-agent``: the client-side daemon.

setevnt-agent run [--config agent.toml] [--client ID] [--url URL] [--backend KIND]
setevnt-agent simulate --clients N [--connections K] [--groups G,...] [--provision]
setevnt-agent hold [--lock PATH | --config agent.toml] -- CMD ARGS...
setevnt-agent check [--config agent.toml] [--json] [run's --client --url --backend --journal]
setevnt-agent service install|remove|start|stop   (Windows; elsewhere: the systemd unit)

On Windows, without --config, run and check read %ProgramData%\\setevnt\\agent.toml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent import guard_cli, service_cli
from agent.assembly import build_handler
from agent.backends import BackendConfigError
from agent.config import ConfigError, default_path, load
from agent.daemon import Agent
from agent.files import UnsafeFile
from agent.guard import GuardConfigError
from broker.connection import explain
from broker.errors import BrokerError
from broker.settings import BrokerSettings
from schemas import cli
from simulator import cli as simulate_cli

PROG = "setevnt-agent"


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = cli.Parser(prog=PROG, description="setevnt client agent")
    cli.add_global_options(parser, log_default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="consume this client's commands until stopped")
    add_config_options(run)
    simulate_cli.add_parser(sub)
    guard_cli.add_commands(sub, add_config_options)
    service_cli.add_command(sub)
    cli.share_globals(parser)
    return parser


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """What ``run`` and ``check`` both read: check judges exactly what run would start."""
    parser.add_argument("--config", help="agent TOML file (see deploy/agent.example.toml)")
    parser.add_argument("--client", help="client id (overrides $SETEVNT_CLIENT_ID and the file)")
    parser.add_argument("--url", help="AMQP URL (overrides $SETEVNT_AMQP_URL and the file)")
    parser.add_argument(
        "--backend",
        help="signal backend (overrides [backend] type): exec, posix-signal, file, "
        "win32-event, simulated",
    )
    parser.add_argument("--journal", help="path of the completed-commands journal")


def config_overrides(args: argparse.Namespace) -> dict[str, str]:
    return {
        key: value
        for key, value in (
            ("client_id", args.client),
            ("url", args.url),
            ("backend", args.backend),
            ("journal", args.journal),
        )
        if value
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet = logging.DEBUG if args.log_level == "DEBUG" else logging.CRITICAL
    logging.getLogger("pika").setLevel(quiet)  # failures are reported by setevnt, in one line
    return cli.run(PROG, lambda: command(args), explain=_broker_errors(args.url))


def _broker_errors(url: str | None) -> cli.Explain:
    def explain_error(exc: Exception) -> tuple[str, int] | None:
        if not isinstance(exc, BrokerError):
            return None
        try:
            return explain(exc, BrokerSettings.from_env(url)), cli.EXIT_BROKER
        except ValueError:  # a URL too broken to name: the error says enough
            return str(exc), cli.EXIT_BROKER

    return explain_error


def command(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        return simulate_cli.main(args)
    if args.command == "service":
        return service_cli.main(args)
    if args.command in guard_cli.COMMANDS:
        return guard_cli.main(args, config_overrides(args) if args.command == "check" else {})
    try:
        config = load(default_path(args.config), overrides=config_overrides(args))
        handler = build_handler(config)
    except (ConfigError, BackendConfigError, GuardConfigError, UnsafeFile) as exc:
        print(f"setevnt-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a journal or spool the agent cannot create or read
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"setevnt-agent: {where}{exc.strerror or exc}", file=sys.stderr)
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
