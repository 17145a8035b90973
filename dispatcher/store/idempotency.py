"""Idempotency keys of trigger requests: the same key from the same requester runs once.

A requester that retries (it timed out waiting for the reply, its process restarted)
sends the same ``idempotency_key``; within the window the dispatcher answers with the
storm it started the first time instead of starting another. Keys are per requester
(the broker-validated ``user_id``), so one service cannot replay another's. Only
accepted requests are remembered: a refusal is decided afresh (the policy may have
changed, a missing group may have appeared).
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.store import db

DEFAULT_WINDOW = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Remembered:
    storm_id: str
    targets: int
    created_at: float


class IdempotencyKeys:
    """Used by one thread at a time (the intake's)."""

    def __init__(self, database: db.DbSettings, window: float = DEFAULT_WINDOW) -> None:
        if window <= 0:
            raise ValueError("the idempotency window must be positive")
        self.window = window
        self._db = db.open_store(database)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> IdempotencyKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find(self, requester: str, key: str, now: float) -> Remembered | None:
        row = self._db.execute(
            "SELECT storm_id, targets, created_at FROM request_keys "
            "WHERE requester = ? AND idempotency_key = ? AND expires_at > ?",
            (requester, key, now),
        ).fetchone()
        return Remembered(*row) if row is not None else None

    def remember(self, requester: str, key: str, storm_id: str, targets: int, now: float) -> None:
        """Remember an accepted request (replacing an expired use of the same key)."""
        with db.transaction(self._db):
            self._db.execute("DELETE FROM request_keys WHERE expires_at <= ?", (now,))
            self._db.execute(
                "INSERT INTO request_keys (requester, idempotency_key, storm_id, targets, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (requester, idempotency_key) DO UPDATE SET "
                "storm_id = excluded.storm_id, targets = excluded.targets, "
                "created_at = excluded.created_at, expires_at = excluded.expires_at",
                (requester, key, storm_id, targets, now, now + self.window),
            )
