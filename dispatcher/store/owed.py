"""What the dispatcher service still owes for accepted requests, kept across restarts.

An accepted request's storm is owed until its summary went out: first the rest of its
commands (a service that stops leaves it ``interrupted``, and the next one resumes it),
then the summary, to everyone who asked for it (the request's ``reply_to`` and
correlation id, and those of its replays). Kept in the database, so that a restarted
service finishes what the last one accepted; forgotten once the summary was sent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from dispatcher.store import db


@dataclass(frozen=True, slots=True)
class Recipient:
    reply_to: str
    correlation_id: str | None


class Owed:
    """Used by one thread (the intake's)."""

    def __init__(self, database: db.DbSettings) -> None:
        self._db = db.open_store(database)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Owed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, storm_id: str, recipient: Recipient | None, now: float) -> None:
        """``storm_id`` is owed; its summary to ``recipient`` too, unless None."""
        reply_to = recipient.reply_to if recipient else None
        correlation_id = recipient.correlation_id if recipient else None
        with db.transaction(self._db):
            self._db.execute(
                "INSERT INTO request_storms (storm_id, reply_to, correlation_id, added_at) "
                "VALUES (?, ?, ?, ?)",
                (storm_id, reply_to, correlation_id, now),
            )

    def storms(self) -> dict[str, list[Recipient]]:
        """Every owed storm, oldest first, with the recipients of its summary."""
        owed: defaultdict[str, list[Recipient]] = defaultdict(list)
        rows = self._db.execute(
            "SELECT storm_id, reply_to, correlation_id FROM request_storms ORDER BY added_at"
        )
        for storm_id, reply_to, correlation_id in rows:
            recipients = owed[storm_id]
            if reply_to is not None:
                recipients.append(Recipient(reply_to, correlation_id))
        return dict(owed)

    def forget(self, storm_id: str) -> None:
        with db.transaction(self._db):
            self._db.execute("DELETE FROM request_storms WHERE storm_id = ?", (storm_id,))
