"""Which clients a command goes to: ``--client``, ``--group``, ``--all``, ``--clients-file``.

The forms combine (their union is targeted). Groups and ``--all`` are looked up in the
fleet registry, offline clients included: their commands wait in their queues. Ids
given explicitly or in a file are used as they are, registered or not; a client without
a queue is reported ``unroutable``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dispatcher.store.db import DbSettings
from dispatcher.store.registry import Registry, SqliteRegistry
from schemas import cli
from schemas.catalog import ComponentEvent
from schemas.messages import ID_PATTERN

SHOWN_IDS = 10  # the first target ids a dry run prints


class TargetError(ValueError):
    """The targets cannot be resolved (bad id, unreadable file, empty group)."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    clients: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    everyone: bool = False
    clients_file: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.clients or self.groups or self.everyone or self.clients_file)

    @property
    def needs_registry(self) -> bool:
        return self.everyone or bool(self.groups)

    def describe(self) -> str:
        if self.everyone:
            return "all clients"
        parts = [f"group {g}" for g in self.groups]
        parts += [f"{len(self.clients)} client(s)"] if self.clients else []
        parts += [f"clients in {self.clients_file}"] if self.clients_file else []
        return ", ".join(parts)


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


def read_clients_file(path: str) -> list[str]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"--clients-file {path}: {exc.strerror or exc}") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        client_id = line.split("#", 1)[0].strip()
        if not client_id:
            continue
        if not ID_PATTERN.fullmatch(client_id):
            raise TargetError(f"{path}:{number}: {client_id!r} is not a client id")
        ids.append(client_id)
    return ids


def from_command_line(args: argparse.Namespace, database: DbSettings) -> list[str]:
    """The command line's targets. The registry is read only when they need it, and must
    exist then: a mistyped ``--db`` is an error, not an empty fleet and a new file."""
    spec = from_args(args)
    if not spec.needs_registry:
        return resolve(spec, None)
    with SqliteRegistry(database, create=False) as registry:
        return resolve(spec, registry)


def resolve(spec: TargetSpec, registry: Registry | None) -> list[str]:
    """The targeted client ids, each once, sorted."""
    if spec.empty:
        raise TargetError("no targets: give --client, --group, --all or --clients-file")
    chosen = set()
    for client_id in spec.clients:
        if not ID_PATTERN.fullmatch(client_id):
            raise TargetError(f"invalid client id {client_id!r}: 1-64 of letters, digits, _ . -")
        chosen.add(client_id)
    if spec.clients_file:
        chosen.update(read_clients_file(spec.clients_file))
    if spec.needs_registry:
        if registry is None:
            raise TargetError("--group and --all need the fleet registry (--db)")
        chosen.update(_from_registry(spec, registry))
    return sorted(chosen)


def _from_registry(spec: TargetSpec, registry: Registry) -> set[str]:
    if spec.everyone:
        found = {record.client_id for record in registry.clients()}
        if not found:
            raise TargetError("--all: the fleet registry has no clients yet")
        return found
    found = set()
    for group in spec.groups:
        members = {record.client_id for record in registry.clients(group=group)}
        if not members:
            raise TargetError(f"--group {group}: no registered client is in that group")
        found |= members
    return found


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
