"""What the collector writes to the ledger: its clients' answers and what dispatchers issued.

An ack only ever updates the row of its own command: the one whose command id *and*
client id it names. It never creates a row, and the row, written by a dispatcher, not the
ack, says which component, event and storm the command belongs to, so whatever a client
sends, it can neither grow the ledger nor put names of its choosing into the metrics.
A row that already holds a final answer keeps it (a redelivered ack changes nothing).

Rows of commands published outside storms come from the dispatchers themselves, through
:class:`schemas.messages.Issued`: ``planned`` before the commands go out (so their acks
find the rows), then their broker outcome.

Storms read the answers back in commit order without a counter every writer updates:
each writer of answers (a collector's ledger) registers once in ``answer_writers`` and
numbers its own batches, which it commits one after the other, so its numbers are in
its commit order; a storm keeps the last number it read per writer. A writer's batch
numbered n is therefore never visible after one numbered n + 1, on either engine and
with any number of collectors, where a shared sequence could be taken in one order and
committed in another (and a single clock row made every ack writer wait for the others).

Each batch also marks its writer seen, on the writer's own row. ``prune`` forgets a
writer not seen since before its cutoff once none of its answers is left in the ledger:
no storm can then miss one of them, and a writer that was only idle registers again.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from dispatcher.store import db
from dispatcher.store.ledger_rows import AnswerRow, Status
from schemas.messages import Ack, Issued, IssueStatus

# Statuses an ack may still change. A final answer and the dispatcher's own verdicts on
# what never reached a queue (unroutable, nacked) stay; an ack proves that a command the
# dispatcher gave up on (pending-offline, even cancelled) did arrive.
ANSWERABLE = frozenset(
    {
        Status.PLANNED,
        Status.SENT,
        Status.DEFERRED,
        Status.PENDING_OFFLINE,
        Status.WAITING_NODE,
        Status.CANCELLED,
    }
)


class Ignored(Enum):
    UNKNOWN = "unknown"  # no command with that id for that client
    REPEATED = "repeated"  # the command already has that answer, or a final one


class Known(NamedTuple):
    """What the ledger holds about a command an ack names."""

    client_id: str
    status: str
    component: str | None
    event: str | None
    storm_id: str | None
    issued_at: float | None


@dataclass(frozen=True, slots=True)
class Answered:
    """An ack the ledger took, with its command's labels as the ledger knows them."""

    ack: Ack
    component: str
    event: str
    storm_id: str | None
    previous: str  # the command's status before this ack
    issued_at: float | None  # the dispatcher's, from the row (the ack's echo if unknown)
    received_at: float
    latency: float | None  # final acks: the command's issue to the ack's arrival

    @property
    def final(self) -> bool:
        return self.ack.final


@dataclass
class Recorded:
    answered: list[Answered] = field(default_factory=list)
    unknown: int = 0  # no command with that id for that client: dropped
    repeated: int = 0  # the command already had that answer or a final one


_SELECT = (
    "SELECT command_id, client_id, status, component, event, storm_id, issued_at "
    "FROM commands WHERE command_id IN ({})"
)
_UPDATE = """
UPDATE commands SET status = ?, acked_at = ?, latency = ?, reason = ?, detail = ?,
    exit_code = ?, output = ?, answer_writer = ?, answer_seq = ?
WHERE command_id = ?
"""


@dataclass
class Numbering:
    """A writer of answers: its id (registered on its first batch) and last batch number."""

    writer: int | None = None
    seq: int = 0


def record_answers(
    connection: db.Connection, acks: Sequence[tuple[Ack, float]], numbering: Numbering
) -> Recorded:
    """Apply acks (each with when it was received) in one transaction, in their order.

    Every batch takes its writer's next number, so a storm reading the numbers above the
    last one it saw of each writer gets every answer once.
    """
    recorded = Recorded()
    with db.transaction(connection):
        writer, seq = _writer(connection, numbering)
        known = _known(connection, [ack.command_id for ack, _ in acks])
        updates = []
        for ack, received_at in acks:
            answered = _answer(known, ack, received_at)
            if answered is Ignored.UNKNOWN:
                recorded.unknown += 1
            elif answered is Ignored.REPEATED:
                recorded.repeated += 1
            else:
                recorded.answered.append(answered)
                updates.append(answered)
        if updates:
            rows = [_update_row(a, writer, seq) for a in updates]
            connection.executemany(_UPDATE, rows)
    # Committed: a failed batch leaves its number (and a new writer) to the next.
    if writer != numbering.writer:
        numbering.writer, numbering.seq = writer, 0
    if updates:
        numbering.seq = seq
    return recorded


def _writer(connection: db.Connection, numbering: Numbering) -> tuple[int, int]:
    """This batch's writer and number, the writer marked seen: a new writer for the first
    batch, and for one prune forgot (it wrote nothing for longer than prune's age).

    A prune that removes the writer's row first makes the update find nothing; one that
    comes second finds it seen now, so a batch never goes under a forgotten writer.
    """
    now = time.time()
    if numbering.writer is not None:
        seen = connection.execute(
            "UPDATE answer_writers SET seen_at = ? WHERE writer_id = ?", (now, numbering.writer)
        )
        if seen.rowcount:
            return numbering.writer, numbering.seq + 1
    (writer,) = connection.execute(
        "INSERT INTO answer_writers (started_at, seen_at, owner) VALUES (?, ?, ?) "
        "RETURNING writer_id",
        (now, now, f"pid {os.getpid()} on {socket.gethostname()}"),
    ).fetchone()
    return int(writer), 1


def answers_after(
    connection: db.Connection, storm_id: str, after: Mapping[int, int], columns: str
) -> Iterator[AnswerRow]:
    """The storm's rows answered in a batch numbered above ``after[writer]`` (0 for a
    writer not in it): its writer and that number, then ``columns``."""
    writers = [int(row[0]) for row in connection.execute("SELECT writer_id FROM answer_writers")]
    # Each term names the storm, so each is a range of the index (storm, writer, number).
    term = "(storm_id = ? AND answer_writer = ? AND answer_seq > ?)"
    for chunk in db.chunks(sorted(writers), 200):
        params: list[object] = []
        for writer in chunk:
            params += (storm_id, writer, after.get(writer, 0))
        yield from connection.execute(
            f"SELECT answer_writer, {columns} FROM commands WHERE "
            + " OR ".join([term] * len(chunk)),
            params,
        )


def _answer(known: dict[str, Known], ack: Ack, received_at: float) -> Answered | Ignored:
    row = known.get(ack.command_id)
    if row is None or row.client_id != ack.client_id:
        return Ignored.UNKNOWN
    if row.status not in ANSWERABLE or (row.status == ack.status == Status.DEFERRED):
        return Ignored.REPEATED
    issued_at = row.issued_at if row.issued_at is not None else ack.issued_at
    latency = None
    if ack.final and issued_at is not None:
        latency = max(0.0, received_at - issued_at)
    answered = Answered(
        ack=ack,
        component=row.component or "",
        event=row.event or "",
        storm_id=row.storm_id,
        previous=row.status,
        issued_at=issued_at,
        received_at=received_at,
        latency=latency,
    )
    known[ack.command_id] = row._replace(status=ack.status)  # a later ack sees this one
    return answered


def _known(connection: db.Connection, command_ids: list[str]) -> dict[str, Known]:
    found: dict[str, Known] = {}
    for chunk in db.chunks(sorted(set(command_ids))):
        rows = connection.execute(_SELECT.format(",".join("?" * len(chunk))), chunk)
        for command_id, *rest in rows:
            found[command_id] = Known(*rest)
    return found


def _update_row(answered: Answered, writer: int, seq: int) -> tuple[object, ...]:
    ack = answered.ack
    final = ack.final
    return (
        ack.status,
        answered.received_at if final else None,
        answered.latency,
        ack.reason,
        ack.detail,
        ack.exit_code,
        ack.output,
        writer,
        seq,
        ack.command_id,
    )


_INSERT_PLANNED = """
INSERT INTO commands (command_id, client_id, component, event, status, issued_at, expires_at)
VALUES (?, ?, ?, ?, 'planned', ?, ?)
ON CONFLICT DO NOTHING
"""
_OUTCOME = """
UPDATE commands SET status = ? WHERE command_id = ? AND client_id = ? AND status = 'planned'
"""
# The broker took the command. An ack may have come first and settled the row: it keeps
# its status but still learns when it was sent, never later than its ack.
_SENT = """
UPDATE commands SET status = CASE WHEN status = 'planned' THEN 'sent' ELSE status END,
    sent_at = CASE WHEN acked_at < ? THEN acked_at ELSE ? END
WHERE command_id = ? AND client_id = ? AND sent_at IS NULL
    AND status NOT IN ('unroutable', 'nacked', 'waiting-node')
"""
# What the service needs to publish the command again (dispatcher.store.waiting).
_WAITING_NODE = """
UPDATE commands SET status = 'waiting-node', requested_by = ?, silent = ?, forced = ?,
    not_before = ?
WHERE command_id = ? AND client_id = ? AND status = 'planned'
"""


def record_issued(connection: db.Connection, issued: Sequence[tuple[Issued, float]]) -> None:
    """Rows for commands dispatchers issued outside storms: planned ones are added (an
    existing row is kept), outcomes settle rows still planned (an ack that came first
    wins, though a sent row it settled still gets its sent time)."""
    with db.transaction(connection):
        for message, received_at in issued:
            if message.status == IssueStatus.PLANNED:
                connection.executemany(
                    _INSERT_PLANNED,
                    [
                        (
                            cid,
                            client,
                            message.component,
                            message.event,
                            message.issued_at,
                            message.expires_at,
                        )
                        for cid, client in message.commands.items()
                    ],
                )
            elif message.status == IssueStatus.WAITING_NODE:
                connection.executemany(
                    _WAITING_NODE,
                    [
                        (
                            message.requested_by,
                            int(bool(message.silent)),
                            int(bool(message.force)),
                            message.not_before,
                            cid,
                            client,
                        )
                        for cid, client in message.commands.items()
                    ],
                )
            elif message.status == IssueStatus.SENT:
                connection.executemany(
                    _SENT,
                    [
                        (received_at, received_at, cid, client)
                        for cid, client in message.commands.items()
                    ],
                )
            else:
                connection.executemany(
                    _OUTCOME,
                    [(message.status, cid, client) for cid, client in message.commands.items()],
                )
