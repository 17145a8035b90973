"""Cycle storms: one COMPONENT_EVENT at many clients, paced, observable and resumable.

A storm is planned in the ledger before anything is sent: one row per client, with its
command id and its start time (``not_before``: a deterministic offset within
``--spread``, from the client id and the storm id, so a site server sees its clients
arrive over the spread instead of at once and a resumed storm keeps every offset). A
client that still has a command for the same event pending gets none (``coalesced``).
Then :class:`dispatcher.storms.flow.StormFlow` publishes through the pipelined
:class:`broker.publisher.ConfirmingPublisher`, settling commands by the answers that the
service's collector records in the ledger (:mod:`dispatcher.storms.answers`).

A storm whose dispatcher died shows ``interrupted`` in ``status``, with exactly how many
commands were confirmed sent (unless the machine went down too: see
:class:`dispatcher.store.ledger.LedgerWriter`); :func:`resume` sends the rest with their
original ids (agents answer a command they already ran from their journal, never run it
twice).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.publisher import Stamp
from broker.settings import BrokerSettings
from dispatcher.access import keys
from dispatcher.api.dispatcher import default_requester, report_message
from dispatcher.store.leases import RESUMED, TAKEN_OVER, Leases, owner_id
from dispatcher.store.ledger import (
    RESUMABLE,
    CommandRecord,
    Ledger,
    LedgerWriter,
    Status,
    StormRecord,
)
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.registry import Registry
from dispatcher.storms.answers import Answers
from dispatcher.storms.flow import FlowLimits, Order, StormFlow, Target
from dispatcher.storms.lease_watch import LeaseWatch
from dispatcher.storms.progress import STALE_AFTER
from dispatcher.storms.publish_reports import PublishReports
from schemas.catalog import ComponentEvent
from schemas.durations import format_duration
from schemas.durations import parse_duration as parse_duration  # where the CLI found it

log = logging.getLogger(__name__)

_PER = {"s": 1, "m": 60, "h": 3600, None: 1}
MAX_EXPIRATION, QUEUE_TTL, MAX_TTL = topology.MAX_EXPIRATION, topology.QUEUE_TTL, topology.MAX_TTL
# Publishes awaiting the broker's confirm: deep enough to cover a storm's bookkeeping
# between confirms, shallow enough not to thrash the broker's file handles over many
# queue indexes (figures in docs/performance.md).
CONFIRM_WINDOW = 512
# Transient commands (the fast lane) touch no queue index: a deeper window pays there.
FAST_CONFIRM_WINDOW = 1000
# The window is split over this many channels of the publisher's connection: the broker
# confirms each channel in one process of its own, which alone would set the pace
# (docs/performance.md).
CHANNELS = 4
# Reconnect attempts of a storm's publisher (jittered backoff, at most 5 s apart): long
# enough to ride out a broker restart.
PUBLISH_ATTEMPTS = 30

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*$")


def parse_rate(text: str) -> float:
    """``200``, ``200/s``, ``600/m``, ``3600/h`` -> commands per second."""
    match = _RATE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate (e.g. 200/s, 600/m)")
    return float(match.group(1)) / _PER[match.group(2)]


@dataclass(frozen=True, slots=True)
class Limit:
    """A count, absolute (``N``) or relative to the storm's size (``P%``)."""

    amount: float
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> Limit:
        percent = text.strip().endswith("%")
        try:
            amount = float(text.strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"{text!r} is not a count or a percentage (e.g. 500, 5%)") from None
        if amount < 0 or not math.isfinite(amount) or (percent and amount > 100):
            raise ValueError(f"{text!r}: must be a count >= 0 or a percentage <= 100%")
        return cls(amount, percent)

    def of(self, total: int) -> int:
        return math.floor(total * self.amount / 100) if self.percent else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{self.amount:g}"


@dataclass(frozen=True, slots=True)
class StormOptions:
    rate: float | None = None  # commands per second; None: as fast as the window allows
    max_in_flight: Limit = Limit(1000)
    max_errors: Limit | None = None  # None: never halt on errors
    spread: float = 0.0
    ttl: float = 3600.0
    delivery_wait: float = 30.0
    silent: bool = False
    force: bool = False
    fast: bool = False  # transient commands, re-sent from the ledger after a broker restart

    def __post_init__(self) -> None:
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise ValueError("--rate must be positive")
        durations = (self.spread, self.delivery_wait, self.ttl)
        if not all(map(math.isfinite, durations)) or self.spread < 0 or min(durations[1:]) <= 0:
            raise ValueError("--spread must be >= 0, --ttl and --delivery-wait positive")
        if self.ttl <= self.spread:
            raise ValueError("--ttl must be longer than --spread, or late clients expire")
        _check_ttl(self.ttl)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["max_in_flight"] = str(self.max_in_flight)
        data["max_errors"] = str(self.max_errors) if self.max_errors is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StormOptions:
        errors = data.get("max_errors")
        return cls(
            **{
                **data,
                "max_in_flight": Limit.parse(data["max_in_flight"]),
                "max_errors": Limit.parse(errors) if errors is not None else None,
            }
        )

    def limits(self, targets: int) -> FlowLimits:
        return FlowLimits(
            max_in_flight=max(1, self.max_in_flight.of(targets)),
            max_errors=self.max_errors.of(targets) if self.max_errors is not None else None,
            rate=self.rate,
            delivery_wait=self.delivery_wait,
            ttl=self.ttl,
            max_errors_text=str(self.max_errors) if self.max_errors is not None else "",
        )


def _check_ttl(ttl: float) -> None:
    """Refused up front: the broker would refuse the publish, or drop the command early."""
    if ttl > MAX_EXPIRATION:
        raise ValueError(
            f"--ttl {format_duration(ttl)} is above RabbitMQ's per-message expiration limit "
            f"({format_duration(MAX_EXPIRATION)})"
        )
    if ttl > QUEUE_TTL:
        raise ValueError(
            f"--ttl {format_duration(ttl)} is longer than the client queues' message TTL "
            f"({format_duration(QUEUE_TTL)}): the broker drops a command by then"
        )


def spread_offset(storm_id: str, client_id: str, spread: float) -> float:
    """Where in ``[0, spread)`` this client starts: the same for every run of the storm."""
    if spread <= 0:
        return 0.0
    digest = hashlib.sha256(f"{storm_id}\0{client_id}".encode()).digest()
    return spread * int.from_bytes(digest[:8], "big") / 2**64


def new_storm_id(now: float) -> str:
    return f"storm-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"


def plan(
    ledger: Ledger,
    event: ComponentEvent,
    client_ids: Sequence[str],
    options: StormOptions,
    *,
    requested_by: str | None = None,
) -> StormRecord:
    """Write the storm and one command per client into the ledger; nothing is sent yet."""
    if not client_ids:
        raise ValueError("a storm needs at least one target client")
    now = time.time()
    storm_id = new_storm_id(now)
    pending = ledger.pending(event.component, event.event, now)
    commands = [
        CommandRecord(
            command_id=uuid.uuid4().hex,
            storm_id=storm_id,
            client_id=client_id,
            component=event.component,
            event=event.event,
            status=Status.COALESCED if client_id in pending else Status.PLANNED,
            not_before=(now + spread_offset(storm_id, client_id, options.spread))
            if options.spread
            else None,
            coalesced_into=pending.get(client_id),
        )
        for client_id in client_ids
    ]
    storm = StormRecord(
        storm_id=storm_id,
        component=event.component,
        event=event.event,
        options=options.to_json(),
        targets=len(commands),
        state=StormState.RUNNING,
        reason=None,
        requested_by=requested_by or default_requester(),
        created_at=now,
        finished_at=None,
        heartbeat_at=now,
        owner=owner_id(),
        cancel_requested=False,
    )
    ledger.create_storm(storm, commands)
    return storm


Progress = Callable[[StormFlow], None]


def run(
    broker: Broker,
    ledger: Ledger,
    registry: Registry | None,
    storm: StormRecord,
    *,
    on_progress: Progress | None = None,
    on_flow: Callable[[StormFlow], None] | None = None,
    signing: keys.Signing | None = None,
) -> StormFlow:
    """Publish the storm's planned commands until done, halted or cancelled, over
    connections from ``broker`` (signed as ``signing`` says; by default with the key of
    ``$SETEVNT_SIGNING_KEY_FILE``)."""
    options = StormOptions.from_json(storm.options)
    commands = ledger.storm_commands(storm.storm_id)
    answers = Answers(storm.storm_id)
    watch = LeaseWatch(storm.storm_id, storm.owner)
    flows: list[StormFlow] = []

    def after_write(ledger: Ledger) -> None:
        answers.read(ledger)
        lost = watch.check(ledger)
        if lost is not None and flows:
            flows[0].suspend_requested = lost  # read on the publishing thread, at its tick

    writer = LedgerWriter(ledger.settings, storm.storm_id, after_write=after_write)
    # On a cluster: tells a queue whose node is down from a missing one (waiting-node).
    probe = broker.probe() if broker.settings.cluster else None
    try:
        offline = registry.offline_ids() if registry is not None else set()
        targets = [
            Target(c.command_id, c.client_id, c.not_before, c.client_id in offline, _status(c))
            for c in commands
        ]
        flow = StormFlow(
            _order(storm, options),
            targets,
            options.limits(storm.targets),
            writer,
            answers,
            on_progress=on_progress,
            reports=_reports(broker.settings, storm),
            nodes=probe,
        )
        flows.append(flow)
        if on_flow is not None:
            on_flow(flow)  # e.g. for a signal handler to ask it to stop
        stamp = (signing or keys.Signing.from_env()).stamp()
        _publish(broker, ledger, storm, options, flow, writer, stamp)
    finally:
        writer.close()
        if probe is not None:
            probe.close()
    if flow.waiting is not None and flow.waiting.parked:
        log.warning(
            "%d command(s) found their queue's broker node down (waiting-node) and were "
            "held for it",
            flow.waiting.parked,
        )
    if watch.lost is None:
        ledger.finish_storm(storm.storm_id, flow.state, flow.reason, time.time())
    else:  # the storm's row is its new owner's
        log.warning("storm %s %s: stopped publishing it", storm.storm_id, watch.lost)
    return flow


def _status(command: CommandRecord) -> str:
    """A resumed storm sends again what waited for a node: it was never confirmed."""
    return Status.PLANNED if command.status == Status.WAITING_NODE else command.status


def warn_without_collector(broker: Broker) -> None:
    """A storm learns its answers from the ledger, which the service's collector writes:
    say so when none runs (storms run by the service itself need not ask)."""
    with broker.named(f"{broker.settings.connection_name} (check)") as checking:
        checking.declare_topology(doing="looking for the dispatcher service")
        collecting = checking.consumers(topology.ACK_QUEUE)
    if collecting == 0:
        log.warning(
            "no `setevnt-dispatcher serve` is collecting acks (%s has no consumer): the "
            "storm sees no answers until it runs, and counts its commands pending-offline "
            "after the delivery wait; their outcome reaches the ledger once it runs",
            topology.ACK_QUEUE,
        )


def _reports(settings: BrokerSettings, storm: StormRecord) -> PublishReports:
    """The storm's publishes, told to the service's collector as they go, for its metrics."""
    return PublishReports(
        settings.connection_name,
        storm.component,
        storm.event,
        lambda report: report_message(report, settings),
    )


def _order(storm: StormRecord, options: StormOptions) -> Order:
    return Order(
        storm.storm_id,
        storm.component,
        storm.event,
        options.silent,
        options.force,
        storm.requested_by,
        persistent=not options.fast,
    )


def _publish(
    broker: Broker,
    ledger: Ledger,
    storm: StormRecord,
    options: StormOptions,
    flow: StormFlow,
    writer: LedgerWriter,
    stamp: Stamp | None,
) -> None:
    window = FAST_CONFIRM_WINDOW if options.fast else CONFIRM_WINDOW
    try:
        with broker.publisher(
            window=window,
            channels=CHANNELS,
            attempts=PUBLISH_ATTEMPTS,
            hooks=flow,
            stamp=stamp,
        ) as publisher:
            publisher.stream(flow, on_outcomes=flow.on_outcomes)
    except BrokerError as exc:
        # Unconfirmed commands stay planned: `resume` sends them (same ids).
        flow.flush()
        writer.close()
        ledger.finish_storm(storm.storm_id, StormState.FAILED, f"broker: {exc}", time.time())
        raise
    flow.conclude()


def resumable(storm: StormRecord, now: float | None = None) -> str | None:
    """None when the storm may be resumed, else why not."""
    if storm.state in RESUMABLE:
        return None
    if storm.state != StormState.RUNNING:
        return f"storm {storm.storm_id} is {storm.state}: nothing to resume"
    if storm.alive(now or time.time(), STALE_AFTER):
        return f"storm {storm.storm_id} is still running ({storm.owner})"
    return None


def claim(ledger: Ledger, storm: StormRecord, *, resume: bool = False) -> StormRecord | None:
    """Win the storm's lease for this process, as it was when read (``storm``); None when
    another dispatcher holds it or took it first. ``resume``: an operator's ``resume``,
    which may also take a failed storm and forgets an earlier cancel request."""
    now = time.time()
    seen = None if storm.alive(now, STALE_AFTER) else storm
    with Leases(ledger.settings) as leases:
        won = leases.claim(
            storm.storm_id,
            owner_id(),
            now,
            seen=seen,
            states=RESUMED if resume else TAKEN_OVER,
            reset_cancel=resume,
        )
    return ledger.storm(storm.storm_id) if won else None
