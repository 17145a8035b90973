"""What the ledger stores: command statuses, storm and command rows.

Kept apart from the SQL (:mod:`dispatcher.store.ledger`) because storms, ``status`` and the
progress display all speak in these terms.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.messages import Command


class Status(StrEnum):
    PLANNED = "planned"  # in a storm, not confirmed by the broker (yet)
    SENT = "sent"
    DEFERRED = "deferred"  # the agent holds it (a distribution is running)
    PENDING_OFFLINE = "pending-offline"  # queued for a client that did not take it
    # Its client's queue is on a cluster node that is down: sent again when it is back.
    WAITING_NODE = "waiting-node"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    COALESCED = "coalesced"  # not sent: the same event was still pending for the client
    UNROUTABLE = "unroutable"
    NACKED = "nacked"
    CANCELLED = "cancelled"  # never sent: the storm was cancelled or halted


class StormState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    HALTED = "halted"  # stopped early: too many commands failed (--max-errors)
    CANCELLED = "cancelled"  # stopped by an operator
    FAILED = "failed"  # the dispatcher gave up on it
    INTERRUPTED = "interrupted"  # its process stopped; `resume` sends the rest


ACK_FINAL = frozenset(
    {Status.DONE, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.COALESCED}
)
PENDING = frozenset({Status.SENT, Status.DEFERRED, Status.PENDING_OFFLINE, Status.WAITING_NODE})
ERRORS = frozenset(
    {Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.UNROUTABLE, Status.NACKED}
)
SETTLED = ACK_FINAL | {Status.UNROUTABLE, Status.NACKED, Status.CANCELLED}
# A running storm's heartbeat older than this means its process is gone.
STALE_AFTER = 10.0
# Storm states that end a run but not the storm: `resume` (or, for a request storm, the
# next service) sends what is still planned.
RESUMABLE = frozenset({StormState.FAILED, StormState.INTERRUPTED})


@dataclass(frozen=True, slots=True)
class StormRecord:
    storm_id: str
    component: str
    event: str
    options: dict[str, Any] = field(compare=False)
    targets: int
    state: str  # a StormState
    reason: str | None
    requested_by: str
    created_at: float
    finished_at: float | None
    heartbeat_at: float
    owner: str
    cancel_requested: bool
    publishing_at: float | None = None  # its first publish: the enqueue rate counts from here

    def alive(self, now: float, stale_after: float) -> bool:
        """Is a process still running this storm?

        Its heartbeat in the ledger says so; on the same host its process id says so at
        once, so a killed dispatcher shows ``interrupted`` without waiting for staleness.
        """
        if self.state != StormState.RUNNING or now - self.heartbeat_at > stale_after:
            return False
        match = re.fullmatch(r"pid (\d+) on (\S+)(?: #\w+)?", self.owner)
        if match is None or match.group(2) != socket.gethostname():
            return True
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, and someone else's
            return True
        return True


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command_id: str
    storm_id: str | None
    client_id: str
    component: str | None
    event: str | None
    status: str
    not_before: float | None = None
    issued_at: float | None = None
    expires_at: float | None = None
    sent_at: float | None = None
    acked_at: float | None = None
    latency: float | None = None
    reason: str | None = None
    detail: str | None = None
    coalesced_into: str | None = None


@dataclass(frozen=True, slots=True)
class SentCommand:
    """A command as it was published, to publish it again unchanged: the same id, start
    and expiry (a one-off's waiting for its node, a fast-lane storm's after a restart)."""

    command_id: str
    client_id: str
    component: str
    event: str
    issued_at: float
    expires_at: float
    not_before: float | None
    requested_by: str
    silent: bool
    force: bool
    storm_id: str | None = None

    @classmethod
    def of_storm(cls, command: CommandRecord, storm: StormRecord, now: float) -> SentCommand:
        """A storm's command: the storm says who asked and how (issued ``now`` if unsent)."""
        assert command.component and command.event and command.expires_at is not None
        return cls(
            command_id=command.command_id,
            client_id=command.client_id,
            component=command.component,
            event=command.event,
            issued_at=command.issued_at if command.issued_at is not None else now,
            expires_at=command.expires_at,
            not_before=command.not_before,
            requested_by=storm.requested_by,
            silent=bool(storm.options.get("silent")),
            force=bool(storm.options.get("force")),
            storm_id=command.storm_id,
        )

    def command(self) -> Command:
        return Command(
            command_id=self.command_id,
            client_id=self.client_id,
            component=self.component,
            event=self.event,
            silent=self.silent,
            issued_at=self.issued_at,
            expires_at=self.expires_at,
            requested_by=self.requested_by,
            storm_id=self.storm_id,
            not_before=self.not_before,
            force=self.force,
        )


# (writer, its answer batch number, command id, status, received at, latency, reason,
# detail), as Ledger.answers reads it.
AnswerRow = tuple[int, int, str, str, float | None, float | None, str | None, str | None]


class StormAnswer(NamedTuple):
    """What a client answered to one command, as the collector recorded it."""

    command_id: str
    status: str
    final: bool  # False: deferred, a final answer follows
    received_at: float | None  # when the collector received the final ack
    latency: float | None  # publish to final ack
    reason: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class StormFigures:
    counts: dict[str, int]
    published: int
    latencies: list[float]  # sorted
    first_sent_at: float | None
    last_sent_at: float | None
    last_acked_at: float | None
