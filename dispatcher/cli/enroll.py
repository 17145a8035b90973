"""Broker users on the command line: ``enroll``, ``enroll-service`` and ``revoke``.

setevnt-dispatcher enroll CLIENT_ID [--backend exec] [--key PATH | --unsigned]
                          [--out PATH] [--json] [--rotate] [--management-url URL]
setevnt-dispatcher enroll-service NAME [--rotate] [--management-url URL]
setevnt-dispatcher revoke CLIENT_ID [--management-url URL]

Every bad input is refused before the broker is touched; then each command proves that
the management API is the AMQP URL's broker (:mod:`broker.same_broker`) before it
creates or deletes a user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from broker import same_broker, topology
from broker.management import MANAGEMENT_ENV, PORT_OFFSET, Management, NotFound
from broker.settings import BrokerSettings
from dispatcher.access import agent_config, keys
from dispatcher.access.enroll import enroll, revoke
from dispatcher.access.services import enroll_service
from dispatcher.api.dispatcher import Dispatcher
from schemas.catalog import DEFAULT_CATALOG

COMMANDS = ("enroll", "enroll-service", "revoke")
ENROLL_UNSIGNED = "then the agent runs commands nobody signed"


def _management_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--management-url",
        metavar="URL",
        help=f"the broker's management API (default: ${MANAGEMENT_ENV}, else "
        f"http://<AMQP host>:<AMQP port + {PORT_OFFSET}>, e.g. 15672 for 5672); it must be "
        "the AMQP URL's broker, which is checked first",
    )
    return parent


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    management = _management_options()
    cmd = sub.add_parser(
        "enroll",
        parents=[management],
        help="create a client's broker user, print its complete agent config",
    )
    cmd.add_argument("client", metavar="CLIENT_ID", help="the client to enroll")
    cmd.add_argument(
        "--backend",
        type=_backend,
        default=agent_config.DEFAULT_BACKEND,
        metavar="NAME",
        help=f"the agent's backend: {', '.join(agent_config.BACKENDS)} (default: "
        f"{agent_config.DEFAULT_BACKEND}; its programs are left for you to fill in)",
    )
    cmd.add_argument(
        "--key",
        metavar="PATH",
        help=f"the signing key `keygen` wrote (default: ${keys.KEY_FILE_ENV}); the config "
        "carries its public key",
    )
    cmd.add_argument(
        "--unsigned",
        action="store_true",
        help="no signing key: the config sets allow_unsigned = true (development only)",
    )
    cmd.add_argument(
        "--out", metavar="PATH", help="write the config there (mode 0600, never replacing a file)"
    )
    cmd.add_argument("--json", action="store_true", help="print a JSON object")
    cmd.add_argument("--rotate", action="store_true", help="replace an enrolled client's password")
    service = sub.add_parser(
        "enroll-service",
        parents=[management],
        help="create a requesting service's broker user, print its URL",
    )
    service.add_argument("service", metavar="NAME", help="the name its policy rule uses")
    service.add_argument(
        "--rotate", action="store_true", help="replace an enrolled service's password"
    )
    revoke_cmd = sub.add_parser(
        "revoke", parents=[management], help="delete a client's broker user"
    )
    revoke_cmd.add_argument("client", metavar="CLIENT_ID", help="the client to revoke")


def _backend(text: str) -> str:
    try:
        return agent_config.parse_backend(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Raises ValueError for bad input (exit 2), BrokerError when the broker fails."""
    if args.command == "enroll":
        return _enroll(args)
    settings = BrokerSettings.from_env(args.url)
    management = Management.for_broker(settings, args.management_url)
    if args.command == "enroll-service":
        return _enroll_service(args, settings, management)
    return _revoke(args, settings, management)


def _enroll(args: argparse.Namespace) -> int:
    queue = topology.client_queue(args.client)  # validates the id
    signing = keys.choose(args.key, args.unsigned, unsigned_means=ENROLL_UNSIGNED)
    if args.out and os.path.lexists(args.out):
        raise ValueError(f"{args.out} exists; not replacing it (choose another --out)")
    if args.out and not os.path.isdir(os.path.dirname(args.out) or "."):
        raise ValueError(f"{args.out}: no such directory")
    settings = BrokerSettings.from_env(args.url)
    management = Management.for_broker(settings, args.management_url)
    same_broker.check(settings, management)
    with Dispatcher(settings=settings) as dispatcher:
        dispatcher.provision([args.client])  # the agent may not declare its own queue
    enrolled = enroll(settings, management, args.client, rotate=args.rotate)
    signer = signing.signer
    text = agent_config.EnrolledConfig(
        client_id=args.client,
        url=enrolled.agent_url,
        public_key=signer.public_text() if signer else None,
        backend=args.backend,
        events=tuple(DEFAULT_CATALOG.event_names()),
    ).toml()
    if args.out:
        _write(args.out, text)
        print(f"agent config for {args.client} written to {args.out}", file=sys.stderr)
    if args.json:
        shown = {"client_id": args.client, "user": args.client, "queue": queue}
        shown.update({"config_path": args.out} if args.out else {"config": text})
        print(json.dumps(shown, sort_keys=True))
    elif not args.out:
        print(text, end="")
    return 0


def _write(path: str, text: str) -> None:
    try:
        agent_config.write_new(path, text)
    except FileExistsError:
        raise ValueError(f"{path} exists; not replacing it (choose another --out)") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None


def _enroll_service(
    args: argparse.Namespace, settings: BrokerSettings, management: Management
) -> int:
    same_broker.check(settings, management)
    with Dispatcher(settings=settings) as dispatcher:
        dispatcher.declare_topology()  # its requests need setevnt.requests to exist
    user = enroll_service(settings, management, args.service, rotate=args.rotate)
    print(f"broker user {user.name}: may only publish to setevnt.requests", file=sys.stderr)
    print(user.url)
    return 0


def _revoke(args: argparse.Namespace, settings: BrokerSettings, management: Management) -> int:
    same_broker.check(settings, management)
    try:
        closed = revoke(management, args.client)
    except NotFound:
        print(f"setevnt-dispatcher: error: {args.client} is not enrolled", file=sys.stderr)
        return 1
    print(f"revoked {args.client}; {closed} open connection(s) closed", file=sys.stderr)
    return 0
