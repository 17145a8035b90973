"""``setevnt-dispatcher prune``: forget old storms and commands from the ledger.

setevnt-dispatcher prune --older-than DURATION [--dry-run] [--yes] [--json]

The age needs its unit (``30`` was once 30 seconds, not days), and what would be
forgotten is counted and confirmed first: on a terminal by a "y", elsewhere by ``--yes``
(as the shipped ``setevnt-prune.service`` passes).
"""

from __future__ import annotations

import argparse
import json
import time

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from schemas import cli


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], store: argparse.ArgumentParser
) -> None:
    command = sub.add_parser(
        "prune", parents=[store], help="forget old storms and commands from the ledger"
    )
    command.add_argument(
        "--older-than",
        type=cli.duration_with_unit,
        required=True,
        metavar="DURATION",
        help="storms that finished, and commands that expired, longer ago (e.g. 30d; a unit "
        "is required)",
    )
    command.add_argument("--dry-run", action="store_true", help="only count what would go")
    command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    command.add_argument("--json", action="store_true", help="print the counts as JSON")


def run(args: argparse.Namespace) -> int:
    database = DbSettings.from_env(args.db)
    now = time.time()
    before = now - args.older_than
    cutoff = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before))
    with Ledger(database, create=False) as ledger:
        if not (args.dry_run or args.yes):
            found = ledger.prune(before, now, dry_run=True)
            what = f"{found.storms} storm(s) and {found.commands} command(s) from before {cutoff}"
            if found.storms or found.commands:
                cli.confirm(f"forget {what}?", yes=False, refusal=f"prune forgets {what}")
        pruned = ledger.prune(before, now, dry_run=args.dry_run)
    if args.json:
        shown = {
            "dry_run": args.dry_run,
            "storms": pruned.storms,
            "commands": pruned.commands,
            "before": before,
            "db": database.path,
        }
        print(json.dumps(shown, sort_keys=True))
        return 0
    verb = "would forget" if args.dry_run else "forgot"
    print(
        f"{verb} {pruned.storms} storm(s) and {pruned.commands} command(s) "
        f"from before {cutoff} in {database}"
    )
    return 0
