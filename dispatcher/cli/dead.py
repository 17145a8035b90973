"""``setevnt-dispatcher dead``: list what is in ``setevnt.dead`` and why, taking nothing off."""

from __future__ import annotations

import argparse
import json
import sys
import time

from broker import topology
from broker.broker import Broker
from dispatcher.report import tables
from dispatcher.report.dead import as_json, explain, table
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger

MAX_LIMIT = 10_000


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], store: argparse.ArgumentParser
) -> None:
    dead = sub.add_parser(
        "dead", parents=[store], help="what is in setevnt.dead and why (nothing is taken off)"
    )
    dead.add_argument(
        "--limit", type=_limit, default=50, metavar="N", help="the first N messages (default 50)"
    )
    dead.add_argument("--json", action="store_true", help="one JSON object per message")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: a count from 1 to {MAX_LIMIT}")
    return value


def run(args: argparse.Namespace) -> int:
    found = Broker.from_url(args.url, name="setevnt-dead").peek(topology.DEAD_QUEUE, args.limit)
    database = DbSettings.from_env(args.db)
    now = time.time()
    ledger = Ledger(database, create=False) if database.exists else None
    try:
        shown = [explain(n, m, ledger, now) for n, m in enumerate(found.messages, 1)]
    finally:
        if ledger is not None:
            ledger.close()
    if args.json:
        tables.write(json.dumps(as_json(m), sort_keys=True) for m in shown)
        return 0
    print(
        f"{topology.DEAD_QUEUE}: {found.depth} message(s)"
        + (f"; the first {len(shown)}, left where they are:" if shown else "")
    )
    if shown:
        tables.write(table(shown, tables.terminal_width(sys.stdout)))
    return 0
