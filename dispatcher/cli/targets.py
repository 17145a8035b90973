"""Targets on the command line (``--client``, ``--group``, ``--all``, ``--clients-file``)
and the safety rails before sending to them (``--dry-run``, ``--yes``, ``--confirm-above``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from dispatcher.store.db import DbSettings
from dispatcher.storms.targets import TargetSpec, lookup
from schemas import cli
from schemas.catalog import ComponentEvent

SHOWN_IDS = 10  # the first target ids a dry run prints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("targets (at least one; they combine)")
    group.add_argument(
        "--client", action="append", default=[], metavar="ID", help="a client id (repeatable)"
    )
    group.add_argument(
        "--group", action="append", default=[], metavar="G", help="every client in group G"
    )
    group.add_argument(
        "--all", action="store_true", dest="everyone", help="every registered client"
    )
    group.add_argument(
        "--clients-file", metavar="FILE", help="client ids, one per line ('#' comments, '-' stdin)"
    )


def from_args(args: argparse.Namespace) -> TargetSpec:
    return TargetSpec(
        clients=tuple(args.client),
        groups=tuple(args.group),
        everyone=bool(args.everyone),
        clients_file=args.clients_file,
    )


def from_command_line(args: argparse.Namespace, database: DbSettings) -> list[str]:
    """The command line's targets, resolved against the registry when they need it."""
    return lookup(from_args(args), database)


# -- safety rails: look before sending, ask before many ----------------------------------


def add_safety_options(parser: argparse.ArgumentParser, *, publishes: str) -> None:
    """``--dry-run``, ``--yes`` and ``--confirm-above``, as ``setevnt`` and storms take them."""
    parser.add_argument(
        "--dry-run", action="store_true", help=f"print the target count and first ids; {publishes}"
    )
    parser.add_argument(
        "--yes", action="store_true", help="no confirmation for --all or many targets"
    )
    parser.add_argument(
        "--confirm-above",
        type=count,
        default=100,
        metavar="N",
        help="ask first (or need --yes) above N targets, and always with --all (default 100)",
    )


def count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, ...)")
    return int(text)


def confirm(args: argparse.Namespace, what: str, size: int) -> None:
    """Ask before ``--all`` or more than ``--confirm-above`` targets (or take ``--yes``)."""
    if args.everyone or size > args.confirm_above:
        cli.confirm(f"send {what}?", yes=args.yes, refusal=f"this sends {what}")


def dry_run(events: Sequence[ComponentEvent], clients: Sequence[str], as_json: bool) -> int:
    """What would be sent, to how many, and the first few: nothing is published."""
    names = [event.name for event in events]
    shown = list(clients[:SHOWN_IDS])
    if as_json:
        row = {"dry_run": True, "events": names, "targets": len(clients), "first": shown}
        print(json.dumps(row, sort_keys=True))
        return cli.EXIT_OK
    more = f", ... ({len(clients) - len(shown)} more)" if len(clients) > len(shown) else ""
    print(f"dry run: would send {' and '.join(names)} to {len(clients)} client(s)")
    print(f"  {', '.join(shown)}{more}")
    return cli.EXIT_OK
