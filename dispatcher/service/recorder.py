"""Make what the collector accepted durable, then count it.

Acks go into the ledger (only onto the row of their own command), issued-command records
add and settle rows, heartbeats go into the registry. Messages are acknowledged to the
broker only after the database committed them, in batches (one transaction and one
``basic.ack multiple`` per ``flush_every``), so a crash or a locked database costs
redeliveries, never records; a redelivered ack finds its answer already there and is
counted once. The metrics hooks run after the commit, with what the ledger says.

A client heard from for the first time gets its command queue provisioned before its
heartbeat is acked: if that fails, the heartbeat comes back and provisioning is tried
again. Every reconnect after the first may follow a broker restart, which empties the
queues of fast-lane (transient) commands: they are re-sent from the ledger
(dispatcher.service.resend).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker.broker import Broker
from broker.errors import BrokerError, BrokerRefused
from broker.settings import BrokerSettings
from dispatcher.access.keys import Signing
from dispatcher.service.resend import resend_fast_lane
from dispatcher.store.db import StoreUnavailable
from dispatcher.store.ledger import Answered, Ledger
from dispatcher.store.registry import Registry, Sighting
from schemas.messages import Ack, Heartbeat, Issued, PublishReport

log = logging.getLogger(__name__)

FLEET_GAUGE_EVERY = 10.0
RESEND_RETRY = 5.0


class RecorderHooks(Protocol):
    def answered(self, answer: Answered) -> None: ...

    def ack_dropped(self, reason: str, count: int = 1) -> None: ...

    def duplicate_acks(self, count: int) -> None: ...

    def publish_report(self, report: PublishReport) -> None: ...

    def clients_provisioned(self, count: int) -> None: ...

    def fleet_size(self, online: int, offline: int) -> None: ...


@dataclass
class _Batch:
    acks: list[tuple[Ack, float]] = field(default_factory=list)
    issued: list[tuple[Issued, float]] = field(default_factory=list)
    reports: list[PublishReport] = field(default_factory=list)
    beats: list[Sighting] = field(default_factory=list)
    last_tag: int | None = None


class Recorder:
    """Used by the collector's thread only."""

    def __init__(
        self,
        settings: BrokerSettings,
        registry: Registry,
        ledger: Ledger,
        hooks: RecorderHooks,
        *,
        flush_every: float = 0.1,
        signing: Signing | None = None,
    ) -> None:
        self._broker = Broker(settings, name="setevnt-registry")
        self._signing = signing  # of the fast lane's re-sent commands
        self.registry = registry
        self.ledger = ledger
        self._hooks = hooks
        self.flush_every = flush_every
        self._batch = _Batch()
        self._next_gauge = 0.0
        self._sessions = 0
        self._resend_at: float | None = None  # monotonic; None: nothing to re-send

    def reset(self) -> None:
        """A new channel: delivery tags of the old one mean nothing (they redeliver)."""
        self._batch = _Batch()
        self._sessions += 1
        if self._sessions > 1:
            self._resend_at = time.monotonic()

    # -- what the collector accepted ------------------------------------------------------

    def ack(self, ack: Ack, received_at: float) -> None:
        if ack.command_id:  # an agent's answer to a body it could not decode names none
            self._batch.acks.append((ack, received_at))
        else:
            self._hooks.ack_dropped("unknown-command")

    def report(self, report: PublishReport | Issued, received_at: float) -> None:
        if isinstance(report, Issued):
            self._batch.issued.append((report, received_at))
        else:
            self._batch.reports.append(report)

    def heartbeat(self, beat: Heartbeat, received_at: float) -> None:
        self._batch.beats.append((beat, received_at))

    @property
    def holding(self) -> bool:
        """Whether deliveries wait for the next flush to be acknowledged."""
        return self._batch.last_tag is not None

    def delivered(self, delivery_tag: int) -> None:
        """Every delivery, counted or not, is acknowledged with the batch it came in."""
        self._batch.last_tag = delivery_tag

    # -- the batch ------------------------------------------------------------------------

    def flush(self, ack_through: Callable[[int], None]) -> None:
        """Commit the batch, then ``ack_through`` its last delivery tag (acknowledging
        every delivery up to it)."""
        self._gauge()
        self._resend()
        batch = self._batch
        if batch.last_tag is None:
            return
        try:
            self._write(batch)
        except StoreUnavailable as exc:  # locked or full: the broker keeps them
            log.warning("database: %s; %d message(s) wait unacked", exc, len(batch.acks))
            return
        for report in batch.reports:
            self._hooks.publish_report(report)
        ack_through(batch.last_tag)
        self._batch = _Batch()

    def _write(self, batch: _Batch) -> None:
        # Issued records first: a batch may hold a command's record and its ack.
        if batch.issued:
            self.ledger.record_issued(batch.issued)
            batch.issued = []  # idempotent anyway; not again if a later step fails
        if batch.acks:
            self._answers(batch.acks)
            batch.acks = []
        if batch.beats:
            self._provision(self.registry.record(batch.beats))

    def _answers(self, acks: list[tuple[Ack, float]]) -> None:
        """Record and count at once: once committed, a redelivery would be a repeat."""
        recorded = self.ledger.record_answers(acks)
        for answer in recorded.answered:
            self._hooks.answered(answer)
        if recorded.unknown:
            self._hooks.ack_dropped("unknown-command", recorded.unknown)
        if recorded.repeated:
            self._hooks.duplicate_acks(recorded.repeated)

    def _provision(self, client_ids: list[str]) -> None:
        if not client_ids:
            return
        try:
            self._broker.provision_clients(client_ids)
        except BrokerRefused as exc:
            # A queue declared elsewhere with other arguments, or no permission: retrying
            # will not help now; the client's next hello tries again.
            log.error("cannot provision %d client queue(s): %s", len(client_ids), exc)
            return
        self.registry.mark_provisioned(client_ids, time.time())
        self._hooks.clients_provisioned(len(client_ids))
        log.info("provisioned %d client queue(s) (new clients, hellos)", len(client_ids))

    def _resend(self) -> None:
        if self._resend_at is None or time.monotonic() < self._resend_at:
            return
        try:
            resend_fast_lane(self._broker, self.ledger, self._signing)
        except BrokerError as exc:
            log.warning("fast lane: re-sending failed (%s); trying again", exc)
            self._resend_at = time.monotonic() + RESEND_RETRY
            return
        self._resend_at = None

    def _gauge(self) -> None:
        now = time.monotonic()
        if now < self._next_gauge:
            return
        self._next_gauge = now + FLEET_GAUGE_EVERY
        self._hooks.fleet_size(*self.registry.counts())
