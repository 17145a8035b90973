"""One-off commands waiting for the cluster node of their client's queue (``waiting-node``).

A storm re-sends its own such commands (:mod:`dispatcher.storms.waiting`); a one-off
trigger's process is gone long before the node is back, so the dispatcher service does
it, from these rows: each keeps what the command needs to be published again with the
same id and expiry. Claiming one is a compare-and-set on its status, so that of several
services sharing the database exactly one publishes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dispatcher.store import db
from dispatcher.store.ledger_rows import SentCommand, Status

_DUE = """
SELECT command_id, client_id, component, event, issued_at, expires_at, not_before,
       requested_by, silent, forced
FROM commands WHERE status = 'waiting-node' AND storm_id IS NULL AND expires_at > ?
ORDER BY expires_at LIMIT ?
"""
_EXPIRE = """
UPDATE commands SET status = 'expired', detail = ?
WHERE status = 'waiting-node' AND storm_id IS NULL AND expires_at <= ?
"""
_CLAIM = """
UPDATE commands SET status = 'planned'
WHERE command_id = ? AND status = 'waiting-node' AND storm_id IS NULL
"""
_SETTLE = """
UPDATE commands SET status = ?, sent_at = ? WHERE command_id = ? AND status = 'planned'
"""
EXPIRED_DETAIL = "its time to live ran out while its queue's cluster node was down"


class NodeWaits:
    """Used by one thread (the service's re-sender)."""

    def __init__(self, database: db.DbSettings) -> None:
        self._db = db.open_store(database)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NodeWaits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def due(self, now: float, limit: int) -> list[SentCommand]:
        """Waiting one-off commands still alive at ``now``, those expiring first first."""
        rows = self._db.execute(_DUE, (now, limit)).fetchall()
        return [_waiting(row) for row in rows]

    def expire(self, now: float) -> int:
        """Waiting one-off commands whose time to live ran out become ``expired``."""
        with db.transaction(self._db):
            return self._db.execute(_EXPIRE, (EXPIRED_DETAIL, now)).rowcount

    def claim(self, command_id: str) -> bool:
        """Take a waiting command to publish it; False when another service took it."""
        with db.transaction(self._db):
            return self._db.execute(_CLAIM, (command_id,)).rowcount == 1

    def settle(self, command_id: str, status: Status, sent_at: float | None) -> None:
        """What became of a claimed command: ``sent``, ``waiting-node`` again, or a failure
        (an ack that came first wins)."""
        with db.transaction(self._db):
            self._db.execute(_SETTLE, (status.value, sent_at, command_id))


def _waiting(row: Sequence[Any]) -> SentCommand:
    command_id, client_id, component, event, issued, expires, not_before, by, silent, force = row
    return SentCommand(
        command_id=command_id,
        client_id=client_id,
        component=component,
        event=event,
        issued_at=float(issued),
        expires_at=float(expires),
        not_before=None if not_before is None else float(not_before),
        requested_by=by or "setevnt",
        silent=bool(silent),
        force=bool(force),
    )
