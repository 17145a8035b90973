"""Which clients a command goes to: ids, groups, everyone, and files of ids.

The forms combine (their union is targeted). Groups and ``--all`` are looked up in the
fleet registry, offline clients included: their commands wait in their queues. Ids
given explicitly or in a file are used as they are, registered or not; a client without
a queue is reported ``unroutable``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dispatcher.store.db import DbSettings
from dispatcher.store.registry import Registry, StoreRegistry
from schemas.rules import ID_PATTERN


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


def lookup(spec: TargetSpec, database: DbSettings) -> list[str]:
    """The targeted client ids. The registry is read only when they need it, and must
    exist then: a mistyped ``--db`` is an error, not an empty fleet and a new file."""
    if not spec.needs_registry:
        return resolve(spec, None)
    with StoreRegistry(database, create=False) as registry:
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
