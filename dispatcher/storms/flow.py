"""How a storm publishes: paced by a rate and by a window of unanswered commands.

:class:`StormFlow` is the :class:`broker.publisher.Source` of a storm. Everything here
runs on the publisher's thread, between confirms and on its ticks: no locks.

- The **window** holds commands handed to the broker whose client has not answered yet.
  A command leaves it with its ack (deferred counts: the client took it), with a failed
  publish, or when the client did not answer within the delivery wait after its start
  time: it is then ``pending-offline`` and stays queued for the client, but an offline
  machine no longer holds a slot. Clients the registry already knows to be offline never
  take a slot.
- The **rate** is a token bucket with a burst of 50 ms of tokens.
- **Errors** (failed, rejected, expired acks; unroutable, nacked publishes) beyond the
  limit halt the storm: nothing more is published, and the reason says why.
- The ledger gets every change in batches, with a heartbeat; a cancel request is read
  back from it in the same transaction.
- A service that settles its storms' answers from the ledger (the request intake) ends a
  run once its last command is confirmed (``await_answers``): the window paces
  publishing, and nobody waits on the publisher's thread for the last answers.
- What it published is reported to the service's collector as it goes
  (:mod:`dispatcher.storms.publish_reports`), through the same publisher, between commands.
- On a cluster, a command whose client's queue is on a node that is down is
  ``waiting-node``, not failed: :mod:`dispatcher.storms.waiting` sends it again when the
  node is back, within its time to live.
- In the fast lane (transient commands) a broker restart loses what sat in the queues:
  when the publisher reconnects, every command confirmed but not answered yet is sent
  again, with its id (an agent that already ran it answers from its journal).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from broker.publisher import Outcome, Outgoing
from broker.topology import client_queue
from dispatcher.api.dispatcher import command_message
from dispatcher.store.ledger import (
    ACK_FINAL,
    ERRORS,
    LedgerWriter,
    SentMark,
    Status,
    StatusMark,
    StormAnswer,
    Writes,
)
from dispatcher.store.ledger_rows import StormState
from dispatcher.storms.answers import Answers
from dispatcher.storms.publish_reports import PublishReports
from dispatcher.storms.waiting import NodeWait, Prober
from schemas.codec import check_fields, encoding
from schemas.messages import Command

# What differs between a storm's commands.
_VARYING = ("command_id", "client_id", "issued_at", "expires_at", "not_before")
# What of those the targets bring, checked once per target; the flow makes the times.
_GIVEN = ("command_id", "client_id", "not_before")
_PLANNED, _SENT = Status.PLANNED.value, Status.SENT.value
_PENDING_OFFLINE = Status.PENDING_OFFLINE.value


@dataclass(slots=True)
class Target:
    """One command of the storm, as the flow tracks it."""

    command_id: str
    client_id: str
    not_before: float | None = None
    offline: bool = False  # the registry says so: never holds a window slot
    status: str = Status.PLANNED
    in_window: bool = False
    issued_at: float = 0.0
    published: bool = False  # confirmed at least once
    deadline: float = 0.0  # monotonic: pending-offline when unanswered by then
    expires_at: float = 0.0  # set once it waited for a node: a re-send keeps its expiry
    queue: str = ""  # the client's queue, named once when the flow takes the target


@dataclass(frozen=True, slots=True)
class FlowLimits:
    max_in_flight: int
    max_errors: int | None
    rate: float | None
    delivery_wait: float
    ttl: float
    max_errors_text: str = ""  # as the operator wrote it (e.g. "5%"), for the halt reason


@dataclass(frozen=True, slots=True)
class Order:
    """What every command of the storm says, apart from its id, client and start time."""

    storm_id: str
    component: str
    event: str
    silent: bool
    force: bool
    requested_by: str
    persistent: bool = True  # False: the fast lane


class _Bucket:
    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.capacity = max(1.0, (rate or 0) * 0.05)
        self.tokens = 1.0
        self.last = time.monotonic()

    def take(self) -> bool:
        if self.rate is None:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class StormFlow:
    def __init__(
        self,
        order: Order,
        targets: list[Target],
        limits: FlowLimits,
        writer: LedgerWriter,
        feed: Answers,
        *,
        on_progress: Callable[[StormFlow], None] | None = None,
        reports: PublishReports | None = None,
        nodes: Prober | None = None,
        flush_every: float = 0.25,
        progress_every: float = 0.5,
    ) -> None:
        _check_targets(targets)
        self.order = order
        self.limits = limits
        self._writer = writer
        self._feed = feed
        self._targets = {t.command_id: t for t in targets}
        self._queue = deque(t for t in targets if t.status == Status.PLANNED)
        self.counts: Counter[str] = Counter(t.status for t in targets)
        self.latencies: list[float] = []
        self.window = 0
        self.errors = 0
        self.published = 0
        self.resent = 0
        self.publishing_at: float | None = None
        self.first_sent_at: float | None = None
        self.last_sent_at: float | None = None
        self.last_acked_at: float | None = None
        self.state: StormState = StormState.RUNNING
        self.reason: str | None = None
        # The targets' fields are checked above, the times come from the clock and the ttl
        # checked in the template: nothing is left to check per command.
        self._encode = encoding(_template(order, limits.ttl), _VARYING, trusted=True)
        self._ttl = limits.ttl
        self._persistent = order.persistent
        self._shared = command_message("0", "0", b"", limits.ttl, order.persistent)
        self._bucket = _Bucket(limits.rate)
        # When commands in the window count pending-offline unless answered: those one
        # confirm settled share an entry (the sequence number orders equal deadlines).
        self._deadlines: list[tuple[float, int, list[Target]]] = []
        self._sequence = itertools.count()
        self._writes = Writes()
        self._on_progress = on_progress
        self._reports = reports
        self.waiting: NodeWait[Target] | None = NodeWait(nodes) if nodes is not None else None
        self._flush_every = flush_every
        self._progress_every = progress_every
        self._next_flush = self._next_progress = time.monotonic()
        self.stop_requested: str | None = None  # set from a signal handler
        # Set by a service that stops: publish nothing more, but cancel nothing either, so
        # that the storm can be resumed where it stopped.
        self.suspend_requested: str | None = None
        # False for a service that learns the answers from the ledger itself: the run then
        # ends once every command is confirmed, and no offline client keeps it waiting.
        self.await_answers = True

    # -- broker.publisher.Source --------------------------------------------------------

    def take(self, room: int) -> list[Outgoing]:
        self._absorb()
        batch = self._report()
        if self.state != StormState.RUNNING:
            return batch
        commands = len(batch)
        now = time.time()
        queue, limit = self._queue, self.limits.max_in_flight
        paced = self._bucket.rate is not None
        while queue and len(batch) < room:
            target = queue[0]
            if target.status != _PLANNED:
                # Put back for a re-send after a reconnect, then answered after all.
                queue.popleft()
                continue
            if not target.offline and self.window >= limit:
                break
            if paced and not self._bucket.take():
                break
            queue.popleft()
            batch.append(self._issue(target, now))
        if len(batch) > commands and self.publishing_at is None:
            self.publishing_at = self._writes.publishing_at = now
        return batch

    def tick(self) -> None:
        self._absorb()
        self._expire()
        if self.waiting is not None and self.state == StormState.RUNNING:
            self.waiting.recheck(self._release, self._expire_waiting)
        if self.stop_requested and self.state == StormState.RUNNING:
            self.halt(self.stop_requested, state=StormState.CANCELLED)
        if self.suspend_requested and self.state == StormState.RUNNING:
            # Unsent commands stay planned; `interrupted` storms are resumable.
            self.state, self.reason = StormState.INTERRUPTED, self.suspend_requested
        now = time.monotonic()
        if now >= self._next_flush:
            self.flush()
        if self._on_progress is not None and now >= self._next_progress:
            self._next_progress = now + self._progress_every
            self._on_progress(self)

    def finished(self) -> bool:
        """The publisher asks once nothing awaits a confirm: then only answers, and the
        report of the last publishes, are awaited."""
        if self._reports is not None and self._reports.owed():
            return False
        if self.state != StormState.RUNNING:
            return True
        if self.waiting is not None and len(self.waiting):
            return False
        return not self._queue and (self.window == 0 or not self.await_answers)

    # -- outcomes -----------------------------------------------------------------------

    def on_outcome(self, message: Outgoing, outcome: Outcome) -> None:
        reports = self._reports
        if reports is not None and reports.owns(message.key):
            reports.settled(outcome)
            return
        target = self._targets[message.key]
        if outcome is not Outcome.SENT and self._park(target, outcome):
            return
        if outcome is not Outcome.SENT:
            self._count(outcome)
            self._leave(target)
            self._settle(target, outcome.value)
            self._writes.statuses.append(StatusMark(outcome.value, target.command_id))
            self._failed(target, outcome.value, None)
            return
        self._sent([target], time.time(), time.monotonic())

    def on_outcomes(self, settled: list[tuple[Outgoing, Outcome]]) -> None:
        """:meth:`on_outcome` of each message of one confirm; the commands the broker took
        are settled together, with one clock reading."""
        targets = self._targets
        report = self._reports.in_flight if self._reports is not None else None
        sent = []
        for message, outcome in settled:
            if outcome is Outcome.SENT and message.key != report:
                sent.append(targets[message.key])
            else:
                self.on_outcome(message, outcome)
        if sent:
            self._sent(sent, time.time(), time.monotonic())

    def _sent(self, sent: list[Target], now: float, monotonic: float) -> None:
        """The broker confirmed the commands of ``sent`` at ``now`` (``monotonic``)."""
        first = [target for target in sent if not target.published]
        for target in first:
            target.published = True  # a re-sent command counts once, as its first publish
        if first:
            self.published += len(first)
            self._count(Outcome.SENT, len(first))
        if self.first_sent_at is None:
            self.first_sent_at = now
        self.last_sent_at = now
        ttl, mark = self._ttl, self._writes.sent.append
        deadline = monotonic + self.limits.delivery_wait
        due: list[Target] = []  # in the window: pending-offline at ``deadline`` if unanswered
        settled = offline = 0
        for target in sent:
            # The statuses' plain strings: an enum's ``.value`` is a property call per command.
            status = _PENDING_OFFLINE if target.offline else _SENT
            issued = target.issued_at
            mark(SentMark(status, issued, issued + ttl, now, target.command_id))
            if target.status == _PLANNED:
                target.status = status
                settled += 1
                offline += target.offline
            if target.in_window:
                # Counted from the client's start time: with --spread, a late start is no
                # sign of an offline client.
                if target.not_before is not None and target.not_before > now:
                    target.deadline = deadline + (target.not_before - now)
                    self._due(target.deadline, [target])
                else:
                    target.deadline = deadline
                    due.append(target)
        if due:
            self._due(deadline, due)
        if settled:
            counts = self.counts
            counts[_PLANNED] -= settled
            counts[_SENT] += settled - offline
            counts[_PENDING_OFFLINE] += offline

    def _due(self, deadline: float, targets: list[Target]) -> None:
        heapq.heappush(self._deadlines, (deadline, next(self._sequence), targets))

    # -- broker.publisher.PublishHooks -------------------------------------------------

    def confirmed(self, outcome: Outcome, seconds: float) -> None:
        """Per-confirm timing is the service's metric; a storm has its own figures."""

    def reconnected(self) -> None:
        """The publisher reconnected: in the fast lane the broker may have lost commands."""
        if self.order.persistent or self.state != StormState.RUNNING:
            return
        lost = [
            t
            for t in self._targets.values()
            if t.published and t.status in (Status.SENT, Status.PENDING_OFFLINE)
        ]
        for target in reversed(lost):
            self._leave(target)
            self._settle(target, Status.PLANNED)
            self._queue.appendleft(target)
        self.resent += len(lost)

    def halt(self, reason: str, *, state: StormState = StormState.HALTED) -> None:
        """Publish nothing more; what was not handed to the broker is cancelled."""
        if self.state != StormState.RUNNING:
            return
        self.state, self.reason = state, reason
        while self._queue:
            self._settle(self._queue.popleft(), Status.CANCELLED)

    def conclude(self) -> None:
        """After the last confirm: take the acks that came meanwhile, write everything."""
        self._absorb()
        if self.state == StormState.RUNNING:
            self.state = StormState.DONE
        self.flush()

    def flush(self) -> None:
        self._next_flush = time.monotonic() + self._flush_every
        writes, self._writes = self._writes, Writes()
        self._writer.submit(writes)  # also the storm's heartbeat: always, even when empty
        if self._writer.cancel_requested and self.state == StormState.RUNNING:
            self.halt(
                "cancelled by an operator (setevnt-dispatcher cancel)", state=StormState.CANCELLED
            )

    # -- internals ----------------------------------------------------------------------

    def _report(self) -> list[Outgoing]:
        """The publish report that is due, if any: at once when nothing more will go."""
        if self._reports is None:
            return []
        last = self.state != StormState.RUNNING or not self._queue
        report = self._reports.take(last=last)
        return [report] if report is not None else []

    def _count(self, outcome: Outcome, commands: int = 1) -> None:
        if self._reports is not None:
            self._reports.count(outcome, commands)

    def _issue(self, target: Target, now: float) -> Outgoing:
        if not target.offline:
            target.in_window = True
            self.window += 1
        command_id = target.command_id
        if target.expires_at:  # sent again after waiting for a node: same expiry
            issued, expires = target.issued_at, target.expires_at
            expiration_ms: int | None = max(1, int((expires - now) * 1000))
        else:
            issued = target.issued_at = now
            expires = now + self._ttl
            expiration_ms = self._shared.expiration_ms
        body = self._encode(
            command_id=command_id,
            client_id=target.client_id,
            issued_at=issued,
            expires_at=expires,
            not_before=target.not_before,
        )
        # command_message()'s fields, without naming the client's queue again per command.
        shared = self._shared
        return Outgoing(
            command_id,
            shared.exchange,
            target.queue,
            body,
            shared.message_type,
            shared.persistent,
            expiration_ms,
        )

    def _park(self, target: Target, outcome: Outcome) -> bool:
        """``waiting-node`` instead of failed when the queue's node is down."""
        if self.waiting is None or not self.waiting.park(target, outcome):
            return False
        self._leave(target)
        if not target.expires_at:
            target.expires_at = target.issued_at + self.limits.ttl
        self._settle(target, Status.WAITING_NODE)
        self._writes.statuses.append(StatusMark(Status.WAITING_NODE.value, target.command_id))
        return True

    def _release(self, target: Target) -> None:
        if target.status == Status.WAITING_NODE:
            self._settle(target, Status.PLANNED)
            self._queue.appendleft(target)

    def _expire_waiting(self, target: Target) -> None:
        if target.status == Status.WAITING_NODE:
            self._settle(target, Status.EXPIRED)
            self._writes.statuses.append(StatusMark(Status.EXPIRED.value, target.command_id))
            self._failed(target, Status.EXPIRED, "its queue's broker node stayed down")

    def _absorb(self) -> None:
        # The collector already wrote these answers to the ledger: only the flow learns.
        for answer in self._feed.drain():
            target = self._targets.get(answer.command_id)
            if target is None or target.status in ACK_FINAL:
                continue
            self._leave(target)
            self._settle(target, answer.status)
            if answer.final:
                self._acked(target, answer)

    def _acked(self, target: Target, answer: StormAnswer) -> None:
        self.last_acked_at = answer.received_at or time.time()
        if answer.latency is not None:
            self.latencies.append(answer.latency)
        if answer.status in ERRORS:
            detail = " ".join(p for p in (answer.reason, answer.detail) if p)
            self._failed(target, answer.status, detail)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, due = heapq.heappop(self._deadlines)
            for target in due:
                unanswered = target.in_window and target.status == Status.SENT
                if unanswered and target.deadline == deadline:  # not re-sent since
                    self._leave(target)
                    self._settle(target, Status.PENDING_OFFLINE)
                    self._writes.statuses.append(
                        StatusMark(Status.PENDING_OFFLINE.value, target.command_id)
                    )

    def _leave(self, target: Target) -> None:
        if target.in_window:
            target.in_window = False
            self.window -= 1

    def _settle(self, target: Target, status: str) -> None:
        self.counts[target.status] -= 1
        self.counts[status] += 1
        target.status = status

    def _failed(self, target: Target, status: str, detail: str | None) -> None:
        self.errors += 1
        limit = self.limits.max_errors
        if limit is not None and self.errors > limit:
            last = f"{target.client_id} {status}" + (f": {detail}" if detail else "")
            shown = self.limits.max_errors_text or str(limit)
            self.halt(f"{self.errors} errors exceed --max-errors {shown} (last: {last})")


def _check_targets(targets: list[Target]) -> None:
    """Check what each target brings to its command (``FieldError``, ``ValueError``) and
    name its queue, once, before anything is published."""
    for target in targets:
        check_fields(Command, _GIVEN, (target.command_id, target.client_id, target.not_before))
        target.queue = client_queue(target.client_id)


def _template(order: Order, ttl: float) -> Command:
    """The storm's command; its varying fields are placeholders that each command sets,
    but its times check the ttl from now."""
    now = time.time()
    return Command(
        command_id="0",
        client_id="0",
        component=order.component,
        event=order.event,
        silent=order.silent,
        issued_at=now,
        expires_at=now + ttl,
        requested_by=order.requested_by,
        storm_id=order.storm_id,
        force=order.force,
    )
