"""The fleet registry: which clients exist, what they run, and whether they are online.

Fed by the agents' heartbeats (``hello`` at start, ``heartbeat`` periodically,
``goodbye`` when they stop) that the dispatcher service consumes from ``setevnt.fleet``.
A client is offline once it said goodbye or nothing was heard from it for
``offline_after`` seconds; that is decided when the registry is read, so nothing has to
sweep the table and the answer is never stale.

Storage sits behind :class:`Registry`; :class:`StoreRegistry` keeps it in the dispatcher's
database, SQLite or PostgreSQL (:mod:`dispatcher.store.db`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from dispatcher.store import db
from schemas.messages import Heartbeat, Kind

_UPSERT = """
INSERT INTO clients (client_id, platform, agent_version, groups, components,
                     first_seen, last_seen, last_kind, copylist_version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (client_id) DO UPDATE SET
    platform = excluded.platform, agent_version = excluded.agent_version,
    groups = excluded.groups, components = excluded.components,
    last_seen = excluded.last_seen, last_kind = excluded.last_kind,
    copylist_version = excluded.copylist_version
WHERE excluded.last_seen >= clients.last_seen
"""

_COLUMNS = (
    "client_id, platform, agent_version, groups, components, first_seen, last_seen, "
    "last_kind, provisioned_at, copylist_version"
)
# Clients by CopyListVersion against the site's: drifted (online, offline), current, and
# not reporting one (agents older than the field, or without it configured).
_CENSUS = """
SELECT
    count(CASE WHEN copylist_version != :desired AND last_kind != :goodbye
               AND last_seen >= :since THEN 1 END),
    count(CASE WHEN copylist_version != :desired AND NOT (last_kind != :goodbye
               AND last_seen >= :since) THEN 1 END),
    count(CASE WHEN copylist_version = :desired THEN 1 END),
    count(CASE WHEN copylist_version IS NULL THEN 1 END)
FROM clients
"""


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    # Three missed heartbeats at the agents' default interval of 60 s.
    offline_after: float = 180.0

    def __post_init__(self) -> None:
        if self.offline_after <= 0:
            raise ValueError("offline_after must be positive")


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    platform: str
    agent_version: str
    groups: tuple[str, ...]
    components: dict[str, str] = field(compare=False)
    first_seen: float
    last_seen: float
    last_kind: str
    provisioned_at: float | None
    copylist_version: str | None = None  # None: the agent does not report one

    def drifted(self, desired: str | None) -> bool:
        """Reports a CopyListVersion other than the site's (unknown is not drifted)."""
        return None not in (desired, self.copylist_version) and self.copylist_version != desired

    def online(self, now: float, offline_after: float) -> bool:
        return self.last_kind != Kind.GOODBYE and now - self.last_seen <= offline_after

    def as_json(self, now: float, offline_after: float) -> dict[str, Any]:
        return {
            "client": self.client_id,
            "state": "online" if self.online(now, offline_after) else "offline",
            "platform": self.platform,
            "groups": list(self.groups),
            "agent_version": self.agent_version,
            "components": self.components,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last_kind": self.last_kind,
            "provisioned": self.provisioned_at is not None,
            "copylist_version": self.copylist_version,
        }


@dataclass(frozen=True, slots=True)
class Census:
    """The fleet by CopyListVersion against the site's desired one."""

    drifted_online: int
    drifted_offline: int
    current: int
    unknown: int

    @property
    def drifted(self) -> int:
        return self.drifted_online + self.drifted_offline


def census(
    connection: db.Connection, desired: str | None, now: float, offline_after: float
) -> Census:
    """Count the fleet against ``desired`` (None: nothing drifted or current, only unknown)."""
    row = connection.execute(
        _CENSUS,
        {"desired": desired, "goodbye": Kind.GOODBYE.value, "since": now - offline_after},
    ).fetchone()
    return Census(*(int(n) for n in row))


class _Known(NamedTuple):
    provisioned_at: float | None
    groups: str  # as stored: JSON
    last_seen: float


Sighting = tuple[Heartbeat, float]  # a heartbeat and when the dispatcher received it


class Registry(Protocol):
    """What the dispatcher needs from fleet storage (a server database can replace it)."""

    settings: RegistrySettings

    def record(self, sightings: Sequence[Sighting]) -> list[str]:
        """Store heartbeats; return the ids whose queue has to be declared: clients never
        provisioned, and clients saying hello (see :meth:`StoreRegistry.record`)."""
        ...

    def mark_provisioned(self, client_ids: Iterable[str], at: float) -> None: ...

    def clients(
        self, *, group: str | None = None, online: bool | None = None, now: float | None = None
    ) -> list[ClientRecord]: ...

    def get(self, client_id: str) -> ClientRecord | None: ...

    def offline_ids(self, now: float | None = None) -> set[str]: ...

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """(online, offline)"""
        ...

    def drifted(
        self, desired: str, *, online: bool | None = None, now: float | None = None
    ) -> list[ClientRecord]:
        """Clients reporting a CopyListVersion other than ``desired``."""
        ...

    def census(self, desired: str | None, now: float | None = None) -> Census: ...

    def close(self) -> None: ...


class StoreRegistry:
    def __init__(
        self,
        database: db.DbSettings,
        settings: RegistrySettings | None = None,
        *,
        create: bool = True,
    ) -> None:
        self.settings = settings or RegistrySettings()
        self._db = db.open_store(database, create=create)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StoreRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, sightings: Sequence[Sighting]) -> list[str]:
        latest: dict[str, Sighting] = {}
        for beat, at in sightings:  # a batch may hold several beats of one client
            if beat.client_id not in latest or at >= latest[beat.client_id][1]:
                latest[beat.client_id] = (beat, at)
        ids = sorted(latest)
        # A hello opens an agent's session. Its queue is declared again then (a declare of
        # an existing queue changes nothing): a broker rebuilt or restored from its
        # definitions has lost the client queues, and their agents would wait for them
        # forever, since every agent consumes its queue only once it exists.
        hellos = {beat.client_id for beat, _at in sightings if beat.kind == Kind.HELLO}
        with db.transaction(self._db):
            known = self._known(ids)
            self._db.executemany(_UPSERT, [_row(beat, at) for beat, at in latest.values()])
            for client_id, (beat, at) in latest.items():
                previous = known.get(client_id)
                if previous is None or (
                    at >= previous.last_seen and previous.groups != json.dumps(list(beat.groups))
                ):
                    self._set_groups(client_id, beat.groups)
        return [
            cid
            for cid in ids
            if cid in hellos or cid not in known or known[cid].provisioned_at is None
        ]

    def mark_provisioned(self, client_ids: Iterable[str], at: float) -> None:
        with db.transaction(self._db):
            self._db.executemany(
                "UPDATE clients SET provisioned_at = ? WHERE client_id = ?",
                [(at, cid) for cid in client_ids],
            )

    def clients(
        self, *, group: str | None = None, online: bool | None = None, now: float | None = None
    ) -> list[ClientRecord]:
        now = time.time() if now is None else now
        sql = f"SELECT {_COLUMNS} FROM clients"
        args: list[Any] = []
        if group is not None:
            sql += " WHERE client_id IN (SELECT client_id FROM client_groups WHERE group_name = ?)"
            args.append(group)
        records = [_record(row) for row in self._db.execute(sql + " ORDER BY client_id", args)]
        if online is None:
            return records
        limit = self.settings.offline_after
        return [r for r in records if r.online(now, limit) == online]

    def get(self, client_id: str) -> ClientRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM clients WHERE client_id = ?", (client_id,)
        ).fetchone()
        return _record(row) if row is not None else None

    def offline_ids(self, now: float | None = None) -> set[str]:
        """Just the ids of offline clients: cheap enough to ask at every storm's start."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT client_id FROM clients WHERE last_kind = ? OR last_seen < ?",
            (Kind.GOODBYE.value, now - self.settings.offline_after),
        )
        return {row[0] for row in rows}

    def counts(self, now: float | None = None) -> tuple[int, int]:
        now = time.time() if now is None else now
        online, total = self._db.execute(
            "SELECT count(CASE WHEN last_kind != ? AND last_seen >= ? THEN 1 END), count(*) "
            "FROM clients",
            (Kind.GOODBYE.value, now - self.settings.offline_after),
        ).fetchone()
        return int(online or 0), int(total) - int(online or 0)

    def drifted(
        self, desired: str, *, online: bool | None = None, now: float | None = None
    ) -> list[ClientRecord]:
        now = time.time() if now is None else now
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM clients WHERE copylist_version IS NOT NULL "
            "AND copylist_version != ? ORDER BY client_id",
            (desired,),
        )
        records = [_record(row) for row in rows]
        if online is None:
            return records
        limit = self.settings.offline_after
        return [r for r in records if r.online(now, limit) == online]

    def census(self, desired: str | None, now: float | None = None) -> Census:
        now = time.time() if now is None else now
        return census(self._db, desired, now, self.settings.offline_after)

    def _known(self, ids: list[str]) -> dict[str, _Known]:
        known: dict[str, _Known] = {}
        for chunk in db.chunks(ids):
            marks = ",".join("?" * len(chunk))
            for client_id, provisioned, groups, last_seen in self._db.execute(
                f"SELECT client_id, provisioned_at, groups, last_seen FROM clients "
                f"WHERE client_id IN ({marks})",
                chunk,
            ):
                known[client_id] = _Known(provisioned, groups, last_seen)
        return known

    def _set_groups(self, client_id: str, groups: Sequence[str]) -> None:
        self._db.execute("DELETE FROM client_groups WHERE client_id = ?", (client_id,))
        self._db.executemany(
            "INSERT INTO client_groups (group_name, client_id) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            [(group, client_id) for group in groups],
        )


def _row(beat: Heartbeat, at: float) -> tuple[Any, ...]:
    return (
        beat.client_id,
        beat.platform,
        beat.agent_version,
        json.dumps(list(beat.groups)),
        json.dumps(beat.components, sort_keys=True),
        at,
        at,
        beat.kind,
        beat.copylist_version,
    )


def _record(row: Sequence[Any]) -> ClientRecord:
    client_id, platform, version, groups, components, first, last, kind, provisioned, copylist = row
    return ClientRecord(
        client_id=client_id,
        platform=platform,
        agent_version=version,
        groups=tuple(json.loads(groups)),
        components=json.loads(components),
        first_seen=first,
        last_seen=last,
        last_kind=kind,
        provisioned_at=provisioned,
        copylist_version=copylist,
    )
