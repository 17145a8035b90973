"""The operator's fleet commands of ``setevnt-dispatcher``: clients, storms, status.

setevnt-dispatcher clients [--group G] [--offline] [--drifted] [--json]
setevnt-dispatcher storm COMPONENT_EVENT (--all | --group G | --client ID | --clients-file F
                   | --retry-from STORM_ID [--status S,S])
                   [--rate N/s] [--max-in-flight N|P%] [--max-errors N|P%]
                   [--spread DURATION] [--ttl DURATION] [--delivery-wait DURATION] [--json]
                   [--dry-run] [--yes] [--confirm-above N]
setevnt-dispatcher resume STORM_ID [--json]
setevnt-dispatcher cancel STORM_ID [--json]
setevnt-dispatcher status [STORM_ID | COMMAND_ID] [--json] [--once]
setevnt-dispatcher results STORM_ID|COMMAND_ID [--status S,S] [--json]   (dispatcher.report.results)
setevnt-dispatcher report STORM_ID [--out report.html] [--json]
setevnt-dispatcher dead [--limit N] [--json]                             (dispatcher.report.dead)
setevnt-dispatcher prune --older-than DURATION [--dry-run] [--yes] [--json]  (dispatcher.cli.prune)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

from broker.broker import Broker
from broker.errors import BrokerError
from dispatcher.access import keys
from dispatcher.cli import dead, key_options, prune, results, targets
from dispatcher.report import page as report
from dispatcher.report.results import rejections
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger, StormRecord
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.registry import ClientRecord, RegistrySettings, StoreRegistry
from dispatcher.store.site import Site
from dispatcher.storms import progress
from dispatcher.storms import storm as storms
from dispatcher.storms.flow import StormFlow
from schemas.catalog import DEFAULT_CATALOG
from schemas.syntax import COPY_QUEUE_EVENT, UsageError, resolve_event

T = TypeVar("T")
COMMANDS = ("clients", "storm", "resume", "cancel", "status", "results", "report", "dead", "prune")


def _typed(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type that shows its own message for a bad value
    ("'fast' is not a rate (e.g. 200/s, 600/m)"), not "invalid parse_rate value"."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def store_options(*, nested: bool = False) -> argparse.ArgumentParser:
    """``--db`` and ``--offline-after``, shared by every command that reads the database.
    ``nested``: for a subcommand's subcommand, whose defaults must not hide the values
    given before it (``site --db X show`` and ``site show --db X`` alike)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        default=argparse.SUPPRESS if nested else None,
        help="database: a SQLite file or a postgresql:// URL (default: $SETEVNT_DB or "
        "./setevnt.db)",
    )
    parent.add_argument(
        "--offline-after",
        type=_typed(storms.parse_duration),
        default=argparse.SUPPRESS if nested else RegistrySettings().offline_after,
        metavar="DURATION",
        help="a client is offline after this long without a heartbeat (default 180s)",
    )
    return parent


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = store_options()
    clients = sub.add_parser("clients", parents=[store], help="list the registered fleet")
    clients.add_argument("--group", help="only clients in this group")
    clients.add_argument("--offline", action="store_true", help="only offline clients")
    clients.add_argument(
        "--drifted",
        action="store_true",
        help="only clients reporting a CopyListVersion other than the site's",
    )
    clients.add_argument("--json", action="store_true", help="one JSON object per line")
    storm = sub.add_parser("storm", parents=[store], help="fire one event at many clients")
    storm.add_argument(
        "event", nargs="?", metavar="COMPONENT_EVENT", help="default with --retry-from: its event"
    )
    targets.add_arguments(storm)
    results.add_retry_arguments(storm)
    _storm_options(storm)
    key_options.add_arguments(storm)
    resume = sub.add_parser(
        "resume", parents=[store], help="send what an interrupted storm did not"
    )
    resume.add_argument("storm_id", metavar="STORM_ID", help="the interrupted storm")
    key_options.add_arguments(resume)
    resume.add_argument("--json", action="store_true", help="print the outcome as JSON")
    cancel = sub.add_parser("cancel", parents=[store], help="stop publishing a storm")
    cancel.add_argument("storm_id", metavar="STORM_ID", help="the running storm")
    cancel.add_argument("--json", action="store_true", help="print the outcome as JSON")
    status = sub.add_parser("status", parents=[store], help="a storm's or a command's status")
    status.add_argument(
        "id", nargs="?", metavar="STORM_ID|COMMAND_ID", help="default: every storm, one line each"
    )
    status.add_argument("--json", action="store_true", help="one JSON object per storm")
    status.add_argument("--once", action="store_true", help="no live progress bar")
    results.add_command(sub, store)
    dead.add_command(sub, store)
    report_cmd = sub.add_parser("report", parents=[store], help="a storm as an HTML page")
    report_cmd.add_argument("storm_id", metavar="STORM_ID", help="the storm to show")
    report_cmd.add_argument("--out", default="report.html", help="default: report.html")
    report_cmd.add_argument("--json", action="store_true", help="print the file written as JSON")
    prune.add_command(sub, store)


# A storm's durations: flag, default seconds, help.
_DURATIONS = (
    ("--spread", 0.0, "start the clients' commands over this long (default 0: at once)"),
    ("--ttl", 3600.0, "a command unread this long expires (default 1h)"),
    (
        "--delivery-wait",
        30.0,
        "unanswered this long after its start: pending-offline (default 30s)",
    ),
)


def _storm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=_typed(storms.parse_rate), metavar="N/s", help="default: unpaced"
    )
    parser.add_argument(
        "--max-in-flight",
        type=_typed(storms.Limit.parse),
        default=storms.Limit(1000),
        metavar="N|P%",
        help="commands sent but not answered yet (default 1000)",
    )
    parser.add_argument(
        "--max-errors",
        type=_typed(storms.Limit.parse),
        metavar="N|P%",
        help="halt when errors exceed this (default: never)",
    )
    for flag, default, text in _DURATIONS:
        parser.add_argument(
            flag,
            type=_typed(storms.parse_duration),
            default=default,
            metavar="DURATION",
            help=text,
        )
    parser.add_argument("--silent", action="store_true", help="silent events (like /q)")
    parser.add_argument("--force", action="store_true", help="ask agents to bypass the guard")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="fast lane: transient commands, re-sent from the ledger after a broker restart",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    targets.add_safety_options(parser, publishes="plans and publishes nothing")


def run(args: argparse.Namespace) -> int:
    handler = {
        "clients": _clients,
        "storm": _storm,
        "resume": _resume,
        "cancel": _cancel,
        "status": _status,
        "results": results.run,
        "report": _report,
        "dead": dead.run,
        "prune": prune.run,
    }[args.command]
    return handler(args)


# -- clients ---------------------------------------------------------------------------


def _clients(args: argparse.Namespace) -> int:
    registry_settings = RegistrySettings(args.offline_after)
    database = DbSettings.from_env(args.db)
    with Site(database, create=False) as site:
        desired = site.copylist_version()
    if args.drifted and desired is None:
        raise ValueError("no site CopyListVersion to drift from: `site set-version V` first")
    with StoreRegistry(database, registry_settings, create=False) as reg:
        now = time.time()
        records = reg.clients(group=args.group, online=False if args.offline else None, now=now)
    version = desired.value if desired is not None else None
    if args.drifted:
        records = [r for r in records if r.drifted(version)]
    rows = [_client_row(r, now, registry_settings.offline_after, version) for r in records]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    print(
        f"{'CLIENT':<20} {'STATE':<8} {'PLATFORM':<8} {'AGENT':<8} {'SEEN':>9}  "
        f"{'COPYLIST':<12} GROUPS"
    )
    for row in rows:
        seen = f"{now - row['last_seen']:.0f} s ago"
        copylist = (row["copylist_version"] or "-") + (" *" if row.get("drifted") else "")
        print(
            f"{row['client']:<20} {row['state']:<8} {row['platform']:<8} "
            f"{row['agent_version']:<8} {seen:>9}  {copylist:<12} {','.join(row['groups'])}"
        )
    if version is not None:
        print(f"(* drifted: the site's CopyListVersion is {version})")
    return 0


def _client_row(
    record: ClientRecord, now: float, offline_after: float, desired: str | None
) -> dict[str, Any]:
    row = record.as_json(now, offline_after)
    if desired is not None:
        row["site_copylist_version"] = desired
        row["drifted"] = record.drifted(desired)
    return row


# -- storms ----------------------------------------------------------------------------


def _storm(args: argparse.Namespace) -> int:
    options = storms.StormOptions(
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        max_errors=args.max_errors,
        spread=args.spread,
        ttl=args.ttl,
        delivery_wait=args.delivery_wait,
        silent=args.silent,
        force=args.force,
        fast=args.fast,
    )
    database = DbSettings.from_env(args.db)
    name, ids = results.storm_targets(args, database)  # before the ledger may create it
    if name == "cq":
        raise UsageError(
            "'cq' is a shortcut of setevnt's syntax (`setevnt --client ID cq`); "
            f"a storm names its event: {COPY_QUEUE_EVENT.name} for the Copy Queue cycle"
        )
    event = resolve_event(name, DEFAULT_CATALOG)
    if args.dry_run:
        return targets.dry_run([event], ids, args.json)
    signing = key_options.from_arguments(args)  # before the storm is planned
    targets.confirm(args, f"{event.name} to {len(ids)} client(s) as a storm", len(ids))
    with _stores(database, args.offline_after) as (registry, ledger):
        storm = storms.plan(ledger, event, ids, options)
        print(f"storm {storm.storm_id}: {event.name} on {len(ids)} client(s)", file=sys.stderr)
        return _drive(args, ledger, registry, storm, signing)


def _resume(args: argparse.Namespace) -> int:
    signing = key_options.from_arguments(args)
    database = DbSettings.from_env(args.db)
    with _stores(database, args.offline_after, create=False) as (registry, ledger):
        storm = ledger.storm(args.storm_id)
        if storm is None:
            raise ValueError(f"no storm {args.storm_id} in {database}")
        refusal = storms.resumable(storm)
        if refusal is not None:
            raise ValueError(refusal)
        claimed = storms.claim(ledger, storm, resume=True)
        if claimed is None:
            now = ledger.storm(storm.storm_id) or storm
            raise ValueError(f"storm {storm.storm_id} was taken up by {now.owner} meanwhile")
        print(f"resuming storm {storm.storm_id}", file=sys.stderr)
        return _drive(args, ledger, registry, claimed, signing)


# Allocations between young-generation collections while a storm publishes (Python's
# default: 700).
STORM_GEN0 = 20_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """This process only publishes its storm: collect the young generation less often, as
    a storm's per-command objects (messages, marks) die young without cycles and each
    collection costs the publishing thread."""
    before = gc.get_threshold()
    gc.set_threshold(STORM_GEN0, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _drive(
    args: argparse.Namespace,
    ledger: Ledger,
    registry: StoreRegistry,
    storm: StormRecord,
    signing: keys.Signing,
) -> int:
    display = progress.Display(sys.stderr, tty=sys.stderr.isatty())
    flows: list[StormFlow] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for flow in flows:  # stop on the publisher's thread, at its next tick
            flow.stop_requested = f"stopped by {signal.Signals(signum).name}"

    with Broker.from_url(args.url, name="setevnt-storm") as broker:
        try:
            storms.warn_without_collector(broker)
            with _signals(on_signal), _fewer_collections():
                flow = storms.run(
                    broker,
                    ledger,
                    registry,
                    storm,
                    on_progress=lambda flow: display.show(_live(storm, flow)),
                    on_flow=flows.append,
                    signing=signing,
                )
        except BrokerError as exc:
            _fail_if_running(ledger, storm.storm_id, f"broker: {exc}")
            raise
    display.show(_live(storm, flow), final=True)
    display.done()
    view = _view(ledger, storm.storm_id)
    progress.print_view(view, args.json)
    rejected = rejections(ledger, storm.storm_id)
    if rejected:
        print(f"setevnt-dispatcher: error: {rejected}", file=sys.stderr)
    return 0 if view.state == StormState.DONE and view.failed == 0 else 1


def _fail_if_running(ledger: Ledger, storm_id: str, reason: str) -> None:
    """A storm whose dispatcher could not reach the broker ends ``failed``: left running,
    it would show ``interrupted`` for ever; failed, it can be resumed or pruned."""
    current = ledger.storm(storm_id)
    if current is not None and current.state == StormState.RUNNING:
        ledger.finish_storm(storm_id, StormState.FAILED, reason[:1024], time.time())


def _cancel(args: argparse.Namespace) -> int:
    with Ledger(DbSettings.from_env(args.db), create=False) as ledger:
        storm = ledger.storm(args.storm_id)
        if storm is None:
            raise ValueError(f"no storm {args.storm_id}")
        if storm.state != StormState.RUNNING:
            if args.json:
                progress.print_view(_view(ledger, storm.storm_id), True)
            else:
                print(f"storm {storm.storm_id} is already {storm.state}")
            return 0
        ledger.request_cancel(storm.storm_id)
        if storms.resumable(storm) is None:  # its dispatcher is gone: cancel it here
            reason = "cancelled by an operator while its dispatcher was not running"
            ledger.finish_storm(storm.storm_id, StormState.CANCELLED, reason, time.time())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = ledger.storm(storm.storm_id)
            if current is not None and current.state != StormState.RUNNING:
                break
            time.sleep(0.1)
        progress.print_view(_view(ledger, storm.storm_id), args.json)
    return 0


def _status(args: argparse.Namespace) -> int:
    with Ledger(DbSettings.from_env(args.db), create=False) as ledger:
        if not args.id:
            for storm in ledger.storms():
                view = _view(ledger, storm.storm_id)
                print(
                    json.dumps(view.as_json(), sort_keys=True)
                    if args.json
                    else progress.lines(view)[0]
                )
            return 0
        if ledger.storm(args.id) is None:
            return _command_status(ledger, args)
        if not (args.json or args.once) and sys.stdout.isatty():
            progress.watch(lambda: _view(ledger, args.id))
        progress.print_view(_view(ledger, args.id), args.json)
    return 0


def _report(args: argparse.Namespace) -> int:
    with Ledger(DbSettings.from_env(args.db), create=False) as ledger:
        data = report.collect(ledger, args.storm_id)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(report.render(data))
    print(
        json.dumps({"out": args.out, "storm_id": args.storm_id})
        if args.json
        else f"wrote {args.out}"
    )
    return 0


def _command_status(ledger: Ledger, args: argparse.Namespace) -> int:
    command = ledger.command(args.id)
    if command is None:
        raise ValueError(f"no storm or command {args.id} in the ledger")
    if args.json:
        print(json.dumps(dataclasses.asdict(command), sort_keys=True))
    else:
        print("\n".join(progress.command_lines(command)))
    return 0


# -- helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def _stores(
    database: DbSettings, offline_after: float, *, create: bool = True
) -> Iterator[tuple[StoreRegistry, Ledger]]:
    with (
        StoreRegistry(database, RegistrySettings(offline_after), create=create) as registry,
        Ledger(database, create=create) as ledger,
    ):
        yield registry, ledger


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[None]:
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _view(ledger: Ledger, storm_id: str) -> progress.StormView:
    storm = ledger.storm(storm_id)
    assert storm is not None
    return progress.from_ledger(storm, ledger.figures(storm_id))


def _live(storm: StormRecord, flow: StormFlow) -> progress.StormView:
    return progress.StormView(
        storm_id=storm.storm_id,
        event=f"{storm.component}_{storm.event}",
        state=flow.state,
        reason=flow.reason,
        targets=storm.targets,
        counts=flow.counts,
        published=flow.published,
        created_at=storm.created_at,
        observed_at=time.time(),
    )
