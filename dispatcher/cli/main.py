"""``setevnt-dispatcher``: the central service and its operator commands.

setevnt-dispatcher serve [--metrics-port 9808] [--policy FILE]
                                                   collect acks and heartbeats, take requests
                                                   (setevnt.requests), serve /metrics
setevnt-dispatcher clients|storm|resume|cancel|status|report|prune
                                                   the fleet (see dispatcher.cli.operator)
setevnt-dispatcher site set-version V|show         the site's CopyListVersion (dispatcher.cli.site)
setevnt-dispatcher provision CLIENT_ID ...         create clients' command queues
setevnt-dispatcher keygen|enroll|enroll-service|revoke
                                                   signing key, broker users (dispatcher.cli.enroll)
setevnt-dispatcher declare                         declare the shared topology
setevnt-dispatcher move-to-quorum                  a single node's classic shared queues
                                                   become quorum queues (broker.migration)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from broker.broker import Broker
from broker.settings import BrokerSettings
from broker.watchdog import DEFAULT_STALL_TIMEOUT
from dispatcher.access import keys
from dispatcher.api.dispatcher import Dispatcher
from dispatcher.cli import completion, key_options
from dispatcher.cli import enroll as enroll_cli
from dispatcher.cli import operator as operator_cli
from dispatcher.cli import site as site_cli
from dispatcher.cli.logs import broker_errors, configure
from dispatcher.service.policy import Policy
from dispatcher.service.serve import serve
from dispatcher.store.db import DbSettings
from schemas import cli

PROG = "setevnt-dispatcher"


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = cli.Parser(prog=PROG, description=__doc__.split("\n")[0])
    cli.add_global_options(parser, log_default="INFO")
    completion.add_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        parents=[operator_cli.store_options()],
        help="collect acks and heartbeats (ledger, registry), serve Prometheus metrics",
    )
    serve.add_argument(
        "--metrics-port", type=cli.port, default=9808, help="Prometheus port (default 9808)"
    )
    serve.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address to serve /metrics on (default local)"
    )
    site_cli.add_serve_options(serve)
    key_options.add_arguments(serve)
    serve.add_argument(
        "--policy",
        help="who may trigger what through setevnt.requests, a TOML file (default: "
        "$SETEVNT_POLICY_FILE; without one every request is refused)",
    )
    serve.add_argument(
        "--stall-timeout",
        type=_stall_timeout,
        default=DEFAULT_STALL_TIMEOUT,
        metavar="DURATION",
        help="exit with status 75, for systemd to restart the service, when the request "
        "intake's loop has not come back for this long (default 2m)",
    )
    serve.add_argument(
        "--take-over-storms",
        action="store_true",
        help="also finish storms started with `storm` whose process died (default: they "
        "wait for `resume`); request storms are always taken over",
    )
    provision = sub.add_parser("provision", help="create the command queues of clients")
    provision.add_argument("clients", nargs="+", metavar="CLIENT_ID", help="the clients' ids")
    provision.add_argument("--json", action="store_true", help="print the outcome as JSON")
    declare = sub.add_parser("declare", help="declare the shared exchanges and queues")
    declare.add_argument("--json", action="store_true", help="print the outcome as JSON")
    move = sub.add_parser(
        "move-to-quorum",
        help="replace classic shared queues by quorum queues, keeping their messages "
        "(stop `serve` first; run as a broker user tagged impersonator)",
    )
    move.add_argument("--json", action="store_true", help="print the outcome as JSON")
    keygen = sub.add_parser("keygen", help="create the command-signing key, print its public key")
    keygen.add_argument("--out", required=True, help="private key file to create (mode 0600)")
    keygen.add_argument("--json", action="store_true", help="print the key file and public key")
    enroll_cli.add_commands(sub)
    operator_cli.add_commands(sub)
    site_cli.add_commands(sub, operator_cli.store_options())
    cli.share_globals(parser)
    return parser


def _stall_timeout(text: str) -> float:
    seconds = cli.duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the stall timeout must be positive")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    return cli.run(PROG, lambda: command(args), explain=broker_errors(args.url))


def command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        signing = key_options.from_arguments(args)  # now, not at its first publish
        stores = (DbSettings.from_env(args.db), args.offline_after)
        return serve(
            BrokerSettings.from_env(args.url),
            args.metrics_addr,
            args.metrics_port,
            stores,
            policy=Policy.load(args.policy),
            drift=site_cli.drift_options(args),
            signing=signing,
            take_over_storms=args.take_over_storms,
            stall_timeout=args.stall_timeout,
        )
    if args.command == "site":
        return site_cli.run(args)
    if args.command in operator_cli.COMMANDS:
        return operator_cli.run(args)
    if args.command in enroll_cli.COMMANDS:
        return enroll_cli.run(args)
    if args.command == "keygen":
        return keygen(args.out, as_json=args.json)
    if args.command == "move-to-quorum":
        moved = Broker.from_url(args.url, name="setevnt-move-to-quorum").move_to_quorum()
        text = "\n".join(f"{q}: quorum queue, {n} message(s) moved" for q, n in moved.items())
        print(json.dumps({"moved": moved}) if args.json else text or "already quorum queues")
        return 0
    with Dispatcher(args.url) as dispatcher:
        if args.command == "provision":
            count = dispatcher.provision(args.clients)
            shown = {"provisioned": count, "clients": args.clients}
            text = f"provisioned {count} client queue(s)"
        else:
            dispatcher.declare_topology()
            shown, text = {"declared": True}, "topology declared"
    print(json.dumps(shown, sort_keys=True) if args.json else text)
    return 0


def keygen(out: str, *, as_json: bool = False) -> int:
    try:
        signer = keys.generate(out)
    except FileExistsError:
        if os.path.lexists(out):
            raise cli.CommandError(f"{out} exists; not replacing a key") from None
        raise cli.CommandError(f"cannot create {out}: a parent is not a directory") from None
    print(f"private key written to {out}; point $SETEVNT_SIGNING_KEY_FILE at it", file=sys.stderr)
    shown = {"private_key_file": out, "public_key": signer.public_text()}
    print(json.dumps(shown, sort_keys=True) if as_json else signer.public_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
