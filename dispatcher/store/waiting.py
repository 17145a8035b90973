"""One-off commands waiting for the cluster node of their client's queue (``waiting-node``).

A storm re-sends its own such commands (:mod:`dispatcher.storms.waiting`); a one-off
trigger's process is gone long before the node is back, so the dispatcher service does
it, from these rows: each keeps what the command needs to be published again with the
same id and expiry. Claiming one is a compare-and-set on its status, so that of several
services sharing the database one publishes it. A claim that is not settled within
:data:`CLAIM_LEASE` is a service that died in between: the command is due again, and
whoever claims it next sends it (at worst a second time, with the same id, which the
agent answers from its journal without running it twice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dispatcher.store import db
from dispatcher.store.ledger_rows import SentCommand, Status

# Longer than a live service holds a claim: its probes, then a publish that gives up
# after a few attempts of at most half a minute each.
CLAIM_LEASE = 600.0

_COLUMNS = """command_id, client_id, component, event, issued_at, expires_at, not_before,
       requested_by, silent, forced"""
# One-off commands are told by coalesce(storm_id, ''), not by storm_id IS NULL, which
# would lead SQLite to the index of every one-off command (commands_by_answer) instead
# of the small ones of waiting commands and of claims; only a one-off is ever claimed.
_DUE = f"""
SELECT {_COLUMNS} FROM commands
WHERE status = 'waiting-node' AND expires_at > ? AND coalesce(storm_id, '') = ''
UNION ALL
SELECT {_COLUMNS} FROM commands
WHERE claimed_at <= ? AND status = 'planned' AND expires_at > ?
ORDER BY expires_at LIMIT ?
"""
_EXPIRE = """
UPDATE commands SET status = 'expired', detail = ?
WHERE status = 'waiting-node' AND expires_at <= ? AND coalesce(storm_id, '') = ''
"""
_EXPIRE_CLAIMED = """
UPDATE commands SET status = 'expired', detail = ?, claimed_at = NULL
WHERE claimed_at <= ? AND status = 'planned' AND expires_at <= ?
"""
_CLAIM = """
UPDATE commands SET status = 'planned', claimed_at = ?
WHERE command_id = ? AND storm_id IS NULL
  AND (status = 'waiting-node' OR (status = 'planned' AND claimed_at <= ?))
"""
_SETTLE = """
UPDATE commands SET status = ?, sent_at = ? WHERE command_id = ? AND status = 'planned'
"""
_UNCLAIM = "UPDATE commands SET claimed_at = NULL WHERE command_id = ?"
EXPIRED_DETAIL = "its time to live ran out while its queue's cluster node was down"
EXPIRED_CLAIMED_DETAIL = (
    "its time to live ran out after the service sending it again stopped before it could "
    "record whether it went out"
)


class NodeWaits:
    """Used by one thread (the service's re-sender)."""

    def __init__(self, database: db.DbSettings, *, lease: float = CLAIM_LEASE) -> None:
        self._db = db.open_store(database)
        self._lease = lease

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NodeWaits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def due(self, now: float, limit: int) -> list[SentCommand]:
        """Waiting one-off commands still alive at ``now``, and those whose claim is older
        than the lease; those expiring first first."""
        rows = self._db.execute(_DUE, (now, now - self._lease, now, limit)).fetchall()
        return [_waiting(row) for row in rows]

    def expire(self, now: float) -> int:
        """Waiting one-off commands whose time to live ran out become ``expired``, and so
        do those whose claim is older than the lease."""
        with db.transaction(self._db):
            waiting = self._db.execute(_EXPIRE, (EXPIRED_DETAIL, now)).rowcount
            claimed = self._db.execute(
                _EXPIRE_CLAIMED, (EXPIRED_CLAIMED_DETAIL, now - self._lease, now)
            ).rowcount
        return waiting + claimed

    def claim(self, command_id: str) -> bool:
        """Take a waiting command, or one whose claim is older than the lease, to publish
        it; False when another service holds it."""
        now = time.time()
        with db.transaction(self._db):
            return self._db.execute(_CLAIM, (now, command_id, now - self._lease)).rowcount == 1

    def settle(self, command_id: str, status: Status, sent_at: float | None) -> None:
        """What became of a claimed command: ``sent``, ``waiting-node`` again, or a failure
        (an ack that came first wins); the claim ends either way."""
        with db.transaction(self._db):
            self._db.execute(_SETTLE, (status.value, sent_at, command_id))
            self._db.execute(_UNCLAIM, (command_id,))


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
