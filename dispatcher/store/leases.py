"""Leases on storms: which dispatcher runs a storm, decided in the database.

A storm's ``owner`` holds its lease while its ``heartbeat_at`` is fresh (a run writes it
with every ledger batch, the service renews the storms it holds but does not publish:
queued ones, and finished ones whose summary it still owes). Once the heartbeat is older
than :data:`LEASE`, or the owner let the storm go (``interrupted``), any dispatcher on the
database may take it, and a compare-and-set in one transaction makes exactly one of them
win: the update names the state and heartbeat it saw expired, so a second taker finds the
row changed and updates nothing.

Owner ids are unique per process (host, process id and a random token), so a restarted
dispatcher that got its old process id back is still someone else. The SQL is plain
(``UPDATE ... WHERE``, rowcount), for any database the store runs on.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import uuid
from collections.abc import Collection, Sequence

from dispatcher.store import db
from dispatcher.store.ledger_rows import RESUMABLE, STALE_AFTER, StormRecord, StormState

# A lease lasts this long after its last heartbeat: the storms' staleness.
LEASE = STALE_AFTER
# What another dispatcher takes over on its own: runs whose process died or stopped.
# ``failed`` is the operator's to resume (the dispatcher gave up on the broker).
TAKEN_OVER = frozenset({StormState.RUNNING, StormState.INTERRUPTED})
# What `resume` may take: the same, and failed runs.
RESUMED = TAKEN_OVER | RESUMABLE

_CLAIM = """
UPDATE storms SET state = 'running', reason = NULL, finished_at = NULL, owner = ?,
    heartbeat_at = ?{reset_cancel}
WHERE storm_id = ? AND state IN ({states})
    AND (state <> 'running' OR owner = ? OR heartbeat_at < ?
         OR (owner = ? AND heartbeat_at = ?))
"""
_ADOPT = """
UPDATE storms SET owner = ?, heartbeat_at = ?
WHERE storm_id = ? AND state <> 'running'
    AND (owner = ? OR heartbeat_at < ? OR (owner = ? AND heartbeat_at = ?))
"""


@functools.cache
def _owner_of(pid: int) -> str:
    return f"pid {pid} on {socket.gethostname()} #{uuid.uuid4().hex[:8]}"


def owner_id() -> str:
    """This process as a storm's owner (a forked child is another owner)."""
    return _owner_of(os.getpid())


def owner_gone(owner: str) -> bool:
    """Is ``owner`` a process on this host that no longer runs? (Elsewhere: unknown, and
    only its lease says.)"""
    match = re.fullmatch(r"pid (\d+) on (\S+)(?: #\w+)?", owner)
    if match is None or match.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, and someone else's
        return False
    return False


class Leases:
    """Claims and renews storms' leases; one connection, used by one thread at a time."""

    def __init__(self, database: db.DbSettings, *, lease: float = LEASE) -> None:
        self.lease = lease
        self._db = db.open_store(database)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def claim(
        self,
        storm_id: str,
        owner: str,
        now: float,
        *,
        seen: StormRecord | None = None,
        states: Collection[str] = TAKEN_OVER,
        reset_cancel: bool = False,
    ) -> bool:
        """Run ``storm_id`` as ``owner`` from now on; whether this call won it.

        Won when the storm is in one of ``states`` and not held: let go (not running),
        held by ``owner`` already, its heartbeat older than the lease, or still as ``seen``
        when the caller proved its owner dead (its process is gone). ``reset_cancel``: an
        operator's explicit ``resume`` forgets an earlier cancel request; a takeover
        honours it (the run cancels at its first write).
        """
        marks = ",".join("?" * len(states))
        sql = _CLAIM.format(states=marks, reset_cancel=", cancel_requested = 0" * reset_cancel)
        params = (owner, now, storm_id, *sorted(states), owner, now - self.lease)
        with db.transaction(self._db):
            cursor = self._db.execute(sql, (*params, *_seen(seen)))
        return cursor.rowcount == 1

    def adopt(
        self, storm_id: str, owner: str, now: float, *, seen: StormRecord | None = None
    ) -> bool:
        """Hold a storm whose run ended (its summary is owed) as ``owner``; whether won."""
        params = (owner, now, storm_id, owner, now - self.lease, *_seen(seen))
        with db.transaction(self._db):
            cursor = self._db.execute(_ADOPT, params)
        return cursor.rowcount == 1

    def renew(self, storm_ids: Sequence[str], owner: str, now: float) -> set[str]:
        """Heartbeat the storms ``owner`` holds; the ids it no longer holds."""
        lost = set()
        with db.transaction(self._db):
            for storm_id in storm_ids:
                cursor = self._db.execute(
                    "UPDATE storms SET heartbeat_at = ? WHERE storm_id = ? AND owner = ?",
                    (now, storm_id, owner),
                )
                if cursor.rowcount != 1:
                    lost.add(storm_id)
        return lost

    def holder(self, storm_id: str) -> str | None:
        row = self._db.execute("SELECT owner FROM storms WHERE storm_id = ?", (storm_id,))
        found = row.fetchone()
        return str(found[0]) if found is not None else None

    def candidates(self, now: float) -> list[str]:
        """Storms another dispatcher may have to take over: let go, or running with a
        heartbeat older than the lease, or running on this host (whose owner's process
        the caller can see gone before the lease runs out)."""
        rows = self._db.execute(
            "SELECT storm_id FROM storms WHERE state = ? OR (state = ? AND "
            "(heartbeat_at < ? OR owner LIKE ?)) ORDER BY created_at",
            (
                StormState.INTERRUPTED.value,
                StormState.RUNNING.value,
                now - self.lease,
                f"pid % on {socket.gethostname()}%",
            ),
        )
        return [row[0] for row in rows]


def _seen(seen: StormRecord | None) -> tuple[str | None, float | None]:
    """The owner and heartbeat a caller saw dead (NULLs compare false: nothing seen)."""
    return (seen.owner, seen.heartbeat_at) if seen is not None else (None, None)
