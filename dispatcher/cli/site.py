"""The site's CopyListVersion on the command line: ``serve``'s options and ``site``.

setevnt-dispatcher serve [--copylist-version V] [--remediate] [--upgrade-event E]
                         [--upgrade-ttl DURATION] [--upgrade-spread DURATION]
setevnt-dispatcher site set-version V     the version every client should report
setevnt-dispatcher site show [--json]     it, the fleet against it, the upgrade's progress

The desired version lives in the database: ``--copylist-version`` (or
``$SETEVNT_COPYLIST_VERSION``) only seeds a database that has none, and ``site
set-version`` changes it for a running service from any terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict

from dispatcher.api.dispatcher import default_requester
from dispatcher.cli.operator import store_options
from dispatcher.service.drift import (
    DEFAULT_UPGRADE_EVENT,
    ROUND_EVERY,
    RemediationSettings,
    parse_event,
    storm_id_for,
)
from dispatcher.service.serve import DriftOptions
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.store.site import Site, check_version
from dispatcher.storms import progress
from dispatcher.storms.storm import parse_duration
from schemas import cli

VERSION_ENV = "SETEVNT_COPYLIST_VERSION"
REMEDIATE_ENV = "SETEVNT_REMEDIATE"
EVENT_ENV = "SETEVNT_UPGRADE_EVENT"
TTL_ENV = "SETEVNT_UPGRADE_TTL"
SPREAD_ENV = "SETEVNT_UPGRADE_SPREAD"
ROUND_ENV = "SETEVNT_REMEDIATION_ROUND"  # seconds between rounds (tests shorten it)
_TRUE = ("1", "true", "yes", "on")


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CopyListVersion drift (KB Q174961)")
    group.add_argument(
        "--copylist-version",
        metavar="V",
        help=f"the site's CopyListVersion when the database has none (${VERSION_ENV})",
    )
    group.add_argument(
        "--remediate",
        action="store_true",
        help=f"send drifted clients the upgrade event (${REMEDIATE_ENV}=1)",
    )
    group.add_argument(
        "--upgrade-event",
        metavar="COMPONENT_EVENT",
        help=f"default: ${EVENT_ENV} or {DEFAULT_UPGRADE_EVENT}",
    )
    group.add_argument(
        "--upgrade-ttl", type=_checked, metavar="DURATION", help=f"default: ${TTL_ENV} or 1h"
    )
    group.add_argument(
        "--upgrade-spread", type=_checked, metavar="DURATION", help=f"default: ${SPREAD_ENV} or 0"
    )


def _checked(text: str) -> str:
    """A duration, checked where it is given, kept as text (the environment's is too)."""
    cli.duration(text)
    return text


def drift_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> DriftOptions:
    """Flags win over the environment (for systemd's EnvironmentFile), then defaults."""
    env = os.environ if environ is None else environ
    version = args.copylist_version or env.get(VERSION_ENV) or None
    remediation = RemediationSettings(
        enabled=args.remediate or env.get(REMEDIATE_ENV, "").lower() in _TRUE,
        event=parse_event(args.upgrade_event or env.get(EVENT_ENV) or DEFAULT_UPGRADE_EVENT),
        ttl=parse_duration(args.upgrade_ttl or env.get(TTL_ENV) or "1h"),
        spread=parse_duration(args.upgrade_spread or env.get(SPREAD_ENV) or "0"),
        every=parse_duration(env.get(ROUND_ENV) or str(ROUND_EVERY)),
    )
    return DriftOptions(check_version(version) if version else None, remediation)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], store: argparse.ArgumentParser
) -> None:
    site = sub.add_parser("site", parents=[store], help="the site's desired CopyListVersion")
    actions = site.add_subparsers(dest="site_command", required=True)
    nested = [store_options(nested=True)]
    set_version = actions.add_parser(
        "set-version", parents=nested, help="the version every client should run"
    )
    set_version.add_argument("version", metavar="V", help="e.g. 1.2.4")
    set_version.add_argument("--json", action="store_true", help="print the new setting as JSON")
    show = actions.add_parser(
        "show", parents=nested, help="the version, the fleet against it, the upgrade"
    )
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.add_argument(
        "--upgrade-event",
        metavar="COMPONENT_EVENT",
        help=f"the service's upgrade event (default: ${EVENT_ENV} or {DEFAULT_UPGRADE_EVENT})",
    )


def run(args: argparse.Namespace) -> int:
    database = DbSettings.from_env(args.db)
    if args.site_command == "set-version":
        with Site(database) as site:
            site.set_copylist_version(args.version, default_requester())
        if args.json:
            print(json.dumps({"copylist_version": args.version}))
        else:
            print(f"site CopyListVersion is now {args.version}")
        return 0
    return _show(args, database)


def _show(args: argparse.Namespace, database: DbSettings) -> int:
    event = parse_event(args.upgrade_event or os.environ.get(EVENT_ENV) or DEFAULT_UPGRADE_EVENT)
    with Site(database, create=False) as site:
        setting = site.copylist_version()
    if setting is None:
        raise ValueError("no site CopyListVersion: `setevnt-dispatcher site set-version V`")
    registry_settings = RegistrySettings(args.offline_after)
    with StoreRegistry(database, registry_settings, create=False) as registry:
        fleet = registry.census(setting.value, time.time())
    storm_id = storm_id_for(event, setting.value)
    with Ledger(database, create=False) as ledger:
        storm = ledger.storm(storm_id)
        view = progress.from_ledger(storm, ledger.figures(storm_id)) if storm else None
    if args.json:
        shown = {
            "copylist_version": setting.value,
            "set_at": setting.set_at,
            "set_by": setting.set_by,
            **asdict(fleet),
            "drifted": fleet.drifted,
            "upgrade": view.as_json() if view else None,
        }
        print(json.dumps(shown, sort_keys=True))
        return 0
    print(
        f"site CopyListVersion {setting.value} (set by {setting.set_by}, "
        f"{time.time() - setting.set_at:.0f} s ago)\n"
        f"  clients: {fleet.current} at it, {fleet.drifted} drifted "
        f"({fleet.drifted_online} online, {fleet.drifted_offline} offline), "
        f"{fleet.unknown} not reporting a version"
    )
    none = f"  no upgrade storm ({storm_id}): nothing sent (remediation: serve --remediate)"
    for line in progress.lines(view) if view else [none]:
        print(line)
    return 0
