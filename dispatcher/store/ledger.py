"""The ledger: every command, its storm, and what finally became of it.

Storm commands are written before anything is published (``planned``), marked ``sent``
once the broker confirmed them and settled by their acks, so a storm interrupted at any
point can say exactly which commands were confirmed and which were not, and can be
resumed. The dispatcher service records every final ack it collects (adopting commands
it never saw planned, e.g. from ``setevnt``), so ``status`` outlives any process.

An agent's final ack is never overwritten (a redelivered command is answered with the
same ack); anything the dispatcher concluded on its own (``pending-offline``, even
``cancelled`` for a command that was in fact published just before a crash) gives way
to the ack that proves otherwise.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from dispatcher.store import db, ledger_answers, ledger_results, migrations
from dispatcher.store.ledger_answers import Answered, Recorded
from dispatcher.store.ledger_results import ClientResult, ReasonCount
from dispatcher.store.ledger_rows import (
    ACK_FINAL,
    ERRORS,
    PENDING,
    RESUMABLE,
    SETTLED,
    STALE_AFTER,
    AnswerRow,
    CommandRecord,
    Status,
    StormAnswer,
    StormFigures,
    StormRecord,
    StormState,
)
from schemas.messages import Ack, Issued

__all__ = [
    "ACK_FINAL",
    "ERRORS",
    "PENDING",
    "RESUMABLE",
    "SETTLED",
    "AnswerRow",
    "Answered",
    "ClientResult",
    "CommandRecord",
    "Ledger",
    "LedgerWriter",
    "ReasonCount",
    "Recorded",
    "SentMark",
    "Status",
    "StatusMark",
    "StormAnswer",
    "StormFigures",
    "StormRecord",
    "Writes",
]


# The SQLite ledger tables of the releases before schema versions (dispatcher.store.migrations
# has every engine's).
SCHEMA = migrations.SQLITE_LEDGER

# What a storm reads of its clients' answers (``coalesced`` rows, the dispatcher's own
# verdict written when a storm is planned, carry no answer number).
_ANSWER_COLUMNS = "answer_seq, command_id, status, acked_at, latency, reason, detail"
# Writers of answers prune forgets: not seen since the cutoff (a storm's staleness at least:
# hosts' clocks differ), with no answer left for a storm to read, even one resumed later.
_GONE_WRITERS = (
    "seen_at < :cutoff AND writer_id NOT IN "
    "(SELECT answer_writer FROM commands WHERE answer_writer IS NOT NULL)"
)
_MARK_SENT = """
UPDATE commands SET status = CASE WHEN status IN ('planned', 'waiting-node') THEN ? ELSE status END,
    issued_at = ?, expires_at = ?, sent_at = ?
WHERE command_id = ?
"""
# The same, for a row a storm's writer already knows: no look-up of the command id in its
# index; the id is still compared, so a row that is not that command's (a rebuilt table)
# is left alone. Its parameters are a SentMark's and then the row's.
_MARK_SENT_ROW = """
UPDATE commands SET status = CASE WHEN status IN ('planned', 'waiting-node') THEN ? ELSE status END,
    issued_at = ?, expires_at = ?, sent_at = ?
WHERE command_id = ? AND rowid = ?
"""
_SET_STATUS = """
UPDATE commands SET status = ?
WHERE command_id = ? AND status IN ('planned', 'sent', 'waiting-node')
"""
_STORM_COLUMNS = (
    "storm_id, component, event, options, targets, state, reason, requested_by, "
    "created_at, finished_at, heartbeat_at, owner, cancel_requested, publishing_at"
)
_COMMAND_COLUMNS = (
    "command_id, storm_id, client_id, component, event, status, not_before, issued_at, "
    "expires_at, sent_at, acked_at, latency, reason, detail, coalesced_into"
)
_COMMAND_NAMES = tuple(name.strip() for name in _COMMAND_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class Pruned:
    storms: int
    commands: int


class SentMark(NamedTuple):
    """A command the broker confirmed: the parameters of ``_MARK_SENT`` in order."""

    status: str
    issued_at: float
    expires_at: float
    sent_at: float | None  # None: never sent (unroutable, nacked), expires all the same
    command_id: str


class StatusMark(NamedTuple):
    """A command's new status: the parameters of ``_SET_STATUS`` in order."""

    status: str
    command_id: str


@dataclass
class Writes:
    """A storm's ledger updates, buffered and applied in one transaction."""

    sent: list[SentMark] = field(default_factory=list)
    statuses: list[StatusMark] = field(default_factory=list)
    publishing_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.sent or self.statuses)


class Ledger:
    def __init__(self, database: db.DbSettings, *, create: bool = True) -> None:
        self.settings = database
        self._db = db.open_store(database, create=create)
        self._numbering = ledger_answers.Numbering()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- storms -------------------------------------------------------------------------

    def create_storm(self, storm: StormRecord, commands: Sequence[CommandRecord]) -> None:
        with db.transaction(self._db):
            self._db.execute(
                f"INSERT INTO storms ({_STORM_COLUMNS}) VALUES ({','.join('?' * 14)})",
                _storm_row(storm),
            )
            self._insert(commands)

    def storm(self, storm_id: str) -> StormRecord | None:
        row = self._db.execute(
            f"SELECT {_STORM_COLUMNS} FROM storms WHERE storm_id = ?", (storm_id,)
        ).fetchone()
        return _storm(row) if row is not None else None

    def storms(self, limit: int = 20) -> list[StormRecord]:
        rows = self._db.execute(
            f"SELECT {_STORM_COLUMNS} FROM storms ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [_storm(row) for row in rows]

    def finish_storm(self, storm_id: str, state: str, reason: str | None, at: float) -> None:
        with db.transaction(self._db):
            self._db.execute(
                "UPDATE storms SET state = ?, reason = ?, finished_at = ?, heartbeat_at = ? "
                "WHERE storm_id = ?",
                (state, reason, at, at, storm_id),
            )
            if state != StormState.RUNNING and state not in RESUMABLE:  # resumable: stays planned
                self._db.execute(
                    "UPDATE commands SET status = ? WHERE storm_id = ? AND status = ?",
                    (Status.CANCELLED, storm_id, Status.PLANNED),
                )

    def claim_storm(self, storm_id: str, owner: str, at: float) -> None:
        """A (resumed) run owns the storm: running again, heartbeat from now on."""
        with db.transaction(self._db):
            self._db.execute(
                "UPDATE storms SET state = 'running', reason = NULL, finished_at = NULL, "
                "owner = ?, heartbeat_at = ?, cancel_requested = 0 WHERE storm_id = ?",
                (owner, at, storm_id),
            )

    def heartbeat(self, storm_ids: Sequence[str], at: float) -> None:
        """Storms a process holds but has not started yet are still running, not stale."""
        with db.transaction(self._db):
            self._db.executemany(
                "UPDATE storms SET heartbeat_at = ? WHERE storm_id = ? AND state = 'running'",
                [(at, storm_id) for storm_id in storm_ids],
            )

    def request_cancel(self, storm_id: str) -> bool:
        with db.transaction(self._db):
            cursor = self._db.execute(
                "UPDATE storms SET cancel_requested = 1 WHERE storm_id = ?", (storm_id,)
            )
        return cursor.rowcount == 1

    def add_commands(self, storm_id: str, commands: Sequence[CommandRecord], at: float) -> None:
        """Grow a running storm whose targets are found as it runs (drift remediation)."""
        with db.transaction(self._db):
            self._insert(commands)
            self._db.execute(
                "UPDATE storms SET heartbeat_at = ?, targets = "
                "(SELECT count(*) FROM commands WHERE storm_id = ?) WHERE storm_id = ?",
                (at, storm_id, storm_id),
            )

    def unexpired(self, storm_id: str, now: float) -> set[str]:
        """Clients with a command in this storm that is planned or has not expired yet."""
        rows = self._db.execute(
            "SELECT DISTINCT client_id FROM commands WHERE storm_id = ? "
            "AND (status = 'planned' OR expires_at > ?)",
            (storm_id, now),
        )
        return {row[0] for row in rows}

    def counts_at(self, storm_id: str, now: float) -> dict[str, int]:
        """The storm's commands per status, those still pending past their expiry counted
        ``expired``: the broker dropped them unanswered (an agent that had spooled one
        acks ``expired`` itself). What is left pending may still be answered."""
        statuses = ", ".join(f"'{s}'" for s in sorted(PENDING))
        rows = self._db.execute(
            f"SELECT CASE WHEN status IN ({statuses}) AND expires_at <= ? THEN 'expired' "
            "ELSE status END, count(*) FROM commands WHERE storm_id = ? GROUP BY 1",
            (now, storm_id),
        )
        return dict(rows.fetchall())

    def answers(self, storm_id: str, after: Mapping[int, int] | None = None) -> Iterator[AnswerRow]:
        """The storm's commands whose client answered in a batch numbered, by the writer
        that recorded it, above that writer's number in ``after``; each row's first two
        fields are the writer and that number. See :mod:`dispatcher.store.ledger_answers`."""
        return ledger_answers.answers_after(self._db, storm_id, after or {}, _ANSWER_COLUMNS)

    def rows_of(self, storm_id: str) -> dict[str, int]:
        """Command id -> row of every command the storm has now (none where the engine has
        no row numbers: marks go by command id there)."""
        if not self._db.dialect.row_numbers:
            return {}
        rows = self._db.execute(
            "SELECT command_id, rowid FROM commands WHERE storm_id = ?", (storm_id,)
        )
        return dict(rows.fetchall())

    def storm_commands(self, storm_id: str) -> list[CommandRecord]:
        rows = self._db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE storm_id = ? "
            f"ORDER BY {self._db.dialect.insert_order}",
            (storm_id,),
        )
        return [CommandRecord(*row) for row in rows]

    def results(
        self,
        storm_id: str,
        now: float,
        statuses: Collection[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ClientResult]:
        """What each client answered: see :mod:`dispatcher.store.ledger_results`."""
        return ledger_results.of_storm(self._db, storm_id, now, statuses, limit)

    def result(self, command_id: str, now: float) -> ClientResult | None:
        return ledger_results.of_command(self._db, command_id, now)

    def reasons(self, storm_id: str, now: float, statuses: Collection[str]) -> list[ReasonCount]:
        return ledger_results.reasons(self._db, storm_id, now, statuses)

    def figures(self, storm_id: str) -> StormFigures:
        counts = dict(
            self._db.execute(
                "SELECT status, count(*) FROM commands WHERE storm_id = ? GROUP BY status",
                (storm_id,),
            ).fetchall()
        )
        # Published: confirmed, or answered by its client (a dispatcher that died before
        # writing down a confirm leaves only the ack, which the collector recorded).
        published, first, last, acked = self._db.execute(
            "SELECT count(CASE WHEN sent_at IS NOT NULL OR acked_at IS NOT NULL "
            "OR status = 'deferred' THEN 1 END), min(sent_at), max(sent_at), max(acked_at) "
            "FROM commands WHERE storm_id = ?",
            (storm_id,),
        ).fetchone()
        latencies = [
            row[0]
            for row in self._db.execute(
                "SELECT latency FROM commands WHERE storm_id = ? AND latency IS NOT NULL "
                "ORDER BY latency",
                (storm_id,),
            )
        ]
        return StormFigures(counts, int(published), latencies, first, last, acked)

    def prune(self, before: float, now: float, *, dry_run: bool = False) -> Pruned:
        """Forget storms that ended before ``before`` and their commands, and commands
        of no storm that expired (or were answered) before it; ``dry_run``: only count.

        A storm whose process died without ending it (``interrupted`` in ``status``) ended
        with its last heartbeat. Kept however old: a storm still running (its heartbeat is
        fresh), one with a command that has not expired (its answer may still come, a
        fast-lane one may still be re-sent) and one that an unexpired request key names (a
        replay must find it).

        Writers of answers go once they have not written since the cutoff and none of
        their answers is left (:mod:`dispatcher.store.ledger_answers`).
        """
        old_storms = (
            "SELECT storm_id FROM storms s WHERE CASE WHEN state = 'running' "
            "THEN heartbeat_at < :cutoff "
            "ELSE coalesce(finished_at, heartbeat_at) < :before END "
            "AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.storm_id = s.storm_id "
            "AND c.expires_at > :now) "
            "AND storm_id NOT IN (SELECT storm_id FROM request_keys WHERE expires_at > :now)"
        )
        # Commands of no storm the ledger knows: single triggers, and acks the collector
        # recorded for commands it had no row of.
        loose = (
            "coalesce(expires_at, acked_at, issued_at) < :before AND (storm_id IS NULL "
            "OR storm_id NOT IN (SELECT storm_id FROM storms))"
        )
        params = {"before": before, "now": now, "cutoff": min(before, now - STALE_AFTER)}
        with db.transaction(self._db):
            storms = self._count("storms", f"storm_id IN ({old_storms})", params)
            commands = self._count("commands", f"storm_id IN ({old_storms})", params)
            commands += self._count("commands", loose, params)
            if not dry_run:
                self._db.execute(f"DELETE FROM commands WHERE {loose}", params)
                self._db.execute(f"DELETE FROM commands WHERE storm_id IN ({old_storms})", params)
                self._db.execute(f"DELETE FROM storms WHERE storm_id IN ({old_storms})", params)
                self._db.execute(f"DELETE FROM answer_writers WHERE {_GONE_WRITERS}", params)
        return Pruned(storms=storms, commands=commands)

    def _count(self, table: str, where: str, params: dict[str, float]) -> int:
        return int(
            self._db.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]
        )

    # -- commands -----------------------------------------------------------------------

    def record_commands(self, commands: Sequence[CommandRecord]) -> None:
        """Commands published outside storms (``setevnt``), once confirmed.

        An ack the collector recorded first wins: it is newer than "sent".
        """
        with db.transaction(self._db):
            self._insert(commands, ignore_existing=True)

    def record_answers(self, acks: Sequence[tuple[Ack, float]]) -> Recorded:
        """Acks with when each was received: see :mod:`dispatcher.store.ledger_answers`."""
        return ledger_answers.record_answers(self._db, acks, self._numbering)

    def record_issued(self, issued: Sequence[tuple[Issued, float]]) -> None:
        ledger_answers.record_issued(self._db, issued)

    def apply(
        self, writes: Writes, storm_id: str, at: float, rows: Mapping[str, int] | None = None
    ) -> bool:
        """Apply a storm's buffered updates; returns whether a cancel was requested.

        ``rows`` (from :meth:`rows_of`) lets marks of known commands go by row.
        """
        with db.transaction(self._db):
            if rows:
                sent, known = writes.sent, rows.get
                # A mark's own tuple extended by its row: the parameters _MARK_SENT_ROW takes.
                by_row = [
                    (*mark, row) for mark in sent if (row := known(mark.command_id)) is not None
                ]
                self._db.executemany(_MARK_SENT_ROW, by_row)
                if len(by_row) < len(sent):
                    self._db.executemany(_MARK_SENT, [m for m in sent if m.command_id not in rows])
            else:
                self._db.executemany(_MARK_SENT, writes.sent)
            self._db.executemany(_SET_STATUS, writes.statuses)
            row = self._db.execute(
                "UPDATE storms SET heartbeat_at = ?, publishing_at = "
                "coalesce(publishing_at, ?) WHERE storm_id = ? RETURNING cancel_requested",
                (at, writes.publishing_at, storm_id),
            ).fetchone()
        return bool(row and row[0])

    def pending(self, component: str, event: str, now: float) -> dict[str, str]:
        """Client id -> id of a command for this event still pending (not expired) there."""
        rows = self._db.execute(
            "SELECT client_id, command_id FROM commands WHERE component = ? AND event = ? "
            "AND status IN ('sent', 'deferred', 'pending-offline') AND expires_at > ?",
            (component, event, now),
        )
        return dict(rows.fetchall())

    def fast_pending(
        self, now: float, live_since: float
    ) -> list[tuple[CommandRecord, StormRecord]]:
        """Fast-lane commands sent but not answered, not expired, of storms not running live.

        What a broker restart may have lost from the queues (a live storm re-sends its own).
        """
        rows = self._db.execute(
            f"SELECT {_prefixed('c', _COMMAND_COLUMNS)}, {_prefixed('s', _STORM_COLUMNS)} "
            "FROM storms s JOIN commands c ON c.storm_id = s.storm_id "
            f"WHERE {self._db.dialect.flag('s.options', 'fast')} AND "
            "c.status IN ('sent', 'pending-offline') AND c.expires_at > ? "
            "AND NOT (s.state = 'running' AND s.heartbeat_at >= ?)",
            (now, live_since),
        )
        return [(CommandRecord(*row[:15]), _storm(row[15:])) for row in rows]

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return CommandRecord(*row) if row is not None else None

    def _insert(self, commands: Iterable[CommandRecord], *, ignore_existing: bool = False) -> None:
        rows = [_command_row(c) for c in commands]
        if not ignore_existing:
            self._db.copy_rows("commands", _COMMAND_NAMES, rows)
            return
        self._db.executemany(
            f"INSERT INTO commands ({_COMMAND_COLUMNS}) VALUES ({','.join('?' * 15)}) "
            "ON CONFLICT DO NOTHING",
            rows,
        )


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{name.strip()}" for name in columns.split(","))


def _storm_row(storm: StormRecord) -> tuple[Any, ...]:
    return (
        storm.storm_id,
        storm.component,
        storm.event,
        json.dumps(storm.options, sort_keys=True),
        storm.targets,
        storm.state,
        storm.reason,
        storm.requested_by,
        storm.created_at,
        storm.finished_at,
        storm.heartbeat_at,
        storm.owner,
        int(storm.cancel_requested),
        storm.publishing_at,
    )


def _storm(row: Sequence[Any]) -> StormRecord:
    values = list(row)
    values[3] = json.loads(values[3])
    values[12] = bool(values[12])
    return StormRecord(*values)


def _command_row(c: CommandRecord) -> tuple[Any, ...]:
    return (
        c.command_id,
        c.storm_id,
        c.client_id,
        c.component,
        c.event,
        c.status,
        c.not_before,
        c.issued_at,
        c.expires_at,
        c.sent_at,
        c.acked_at,
        c.latency,
        c.reason,
        c.detail,
        c.coalesced_into,
    )


class LedgerWriter:
    """Applies a storm's writes on a thread of its own, with a connection of its own.

    SQLite releases the GIL while it works, so the publishing thread keeps publishing
    during a write instead of stalling its confirm window for tens of milliseconds.
    ``after_write`` runs on that thread after each batch: a storm reads its answers there
    (dispatcher.storms.answers), on the same connection and at the same pace.

    The connection is not ``durable``: a flush to disk every batch would compete with the
    broker's own for persistent commands. What a machine crash takes back is the last
    batches' marks; their commands count planned and ``resume`` sends them again, under
    their ids, which agents answer from their journal.
    """

    def __init__(
        self,
        database: db.DbSettings,
        storm_id: str,
        after_write: Callable[[Ledger], None] | None = None,
    ) -> None:
        self._database = database
        self._storm_id = storm_id
        self._after_write = after_write
        self._queue: queue.SimpleQueue[Writes | None] = queue.SimpleQueue()
        self.cancel_requested = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="storm-ledger", daemon=True)
        self._thread.start()

    def submit(self, writes: Writes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(writes)

    def close(self) -> None:
        """Write everything submitted, then stop (raises what went wrong, if anything)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        try:
            ledger = Ledger(replace(self._database, durable=False))
        except BaseException as exc:  # reported to the storm's thread on its next submit
            self.error = exc
            return
        try:
            rows = ledger.rows_of(self._storm_id)  # commands added later go by their id
            while (writes := self._queue.get()) is not None:
                if ledger.apply(writes, self._storm_id, time.time(), rows):
                    self.cancel_requested = True
                if self._after_write is not None:
                    self._after_write(ledger)
        except BaseException as exc:
            self.error = exc
        finally:
            ledger.close()
