"""``setevnt-dispatcher results STORM_ID|COMMAND_ID`` and a storm's ``--retry-from``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from dispatcher.cli import targets
from dispatcher.report import tables
from dispatcher.report.results import (
    RETRY_DEFAULT,
    as_json,
    parse_statuses,
    read,
    retry_plan,
    table,
)
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger


def status_filter(text: str) -> frozenset[str]:
    """``failed,expired`` -> those statuses (an argparse type)."""
    try:
        return parse_statuses(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], store: argparse.ArgumentParser
) -> None:
    results = sub.add_parser(
        "results", parents=[store], help="what each client answered to a storm, and why"
    )
    results.add_argument("id", metavar="STORM_ID|COMMAND_ID", help="a storm, or one command")
    results.add_argument(
        "--status",
        type=status_filter,
        metavar="S,S",
        help="only these statuses, e.g. failed,expired "
        "(pending: sent, pending-offline, waiting-node)",
    )
    results.add_argument("--json", action="store_true", help="one JSON object per client")


def run(args: argparse.Namespace) -> int:
    now = time.time()
    with Ledger(DbSettings.from_env(args.db), create=False) as ledger:
        rows = read(ledger, args.id, args.status, now)
        if args.json:
            tables.write(json.dumps(as_json(row), sort_keys=True) for row in rows)
        else:
            tables.write(table(list(rows), tables.terminal_width(sys.stdout)))
    return 0


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    retry = parser.add_argument_group("retrying a storm (combines with the targets above)")
    retry.add_argument(
        "--retry-from",
        metavar="STORM_ID",
        help="the clients of that storm whose command ended with --status",
    )
    retry.add_argument(
        "--status",
        type=status_filter,
        metavar="S,S",
        help="with --retry-from (default failed,expired; "
        "pending: sent, pending-offline, waiting-node)",
    )


def storm_targets(args: argparse.Namespace, database: DbSettings) -> tuple[str, list[str]]:
    """A storm's event and clients: the targets given, and those ``--retry-from`` finds
    (its event unless another is given)."""
    if args.retry_from is None:
        if args.status is not None:
            raise ValueError("--status goes with --retry-from STORM_ID")
        if args.event is None:
            raise ValueError("give the COMPONENT_EVENT to send (e.g. CCIM32_STARTCYCLE)")
        return args.event, targets.from_command_line(args, database)
    retry = retry_plan(database, args.retry_from, args.status or RETRY_DEFAULT)
    chosen = set(retry.clients)
    if not targets.from_args(args).empty:
        chosen.update(targets.from_command_line(args, database))
    print(
        f"retrying {len(retry.clients)} client(s) of storm {retry.storm.storm_id}",
        file=sys.stderr,
    )
    return args.event or f"{retry.storm.component}_{retry.storm.event}", sorted(chosen)
