"""The site's settings that the running service and the operator's commands share.

Kept in the dispatcher's database, not in the service's configuration, so that
``setevnt-dispatcher site set-version V`` takes effect in a running ``serve`` (it reads
the value at every remediation round) and survives its restarts. Today there is one
setting: the site's desired ``CopyListVersion``, the version of the client component set
every client should run (KB Q174961: clients whose users rarely log off keep running old
client services until client setup runs again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dispatcher.store import db

COPYLIST_VERSION = "copylist_version"
VERSION_MAX = 64  # what a heartbeat may carry


def check_version(version: str) -> str:
    """A CopyListVersion as heartbeats carry it: 1-64 printable characters, no edge spaces."""
    if not 0 < len(version) <= VERSION_MAX or version != version.strip():
        raise ValueError(f"CopyListVersion {version!r}: 1-{VERSION_MAX} characters, no edge spaces")
    if not version.isprintable():
        raise ValueError(f"CopyListVersion {version!r}: printable characters only")
    return version


@dataclass(frozen=True, slots=True)
class Setting:
    value: str
    set_at: float
    set_by: str


class Site:
    def __init__(self, database: db.DbSettings, *, create: bool = True) -> None:
        self._db = db.open_store(database, create=create)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def copylist_version(self) -> Setting | None:
        row = self._db.execute(
            "SELECT value, set_at, set_by FROM site WHERE name = ?", (COPYLIST_VERSION,)
        ).fetchone()
        return Setting(*row) if row is not None else None

    def set_copylist_version(self, version: str, by: str) -> None:
        with db.transaction(self._db):
            self._db.execute(
                "INSERT INTO site (name, value, set_at, set_by) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "set_at = excluded.set_at, set_by = excluded.set_by",
                (COPYLIST_VERSION, check_version(version), time.time(), by),
            )

    def seed_copylist_version(self, version: str, by: str) -> bool:
        """Set it only when nothing is stored (the service's configured initial value);
        returns whether it was stored."""
        with db.transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO site (name, value, set_at, set_by) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (COPYLIST_VERSION, check_version(version), time.time(), by),
            )
        return cursor.rowcount == 1
