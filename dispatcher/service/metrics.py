"""Prometheus metrics as hooks: the collector and publisher call these, nothing else does.

Label values are bounded by construction: component and event come from the ledger row
of the command (never from what a client sends) and are checked against the events this
dispatcher knows (its catalog and its upgrade event), anything else is ``other``;
status, reason and publish result come from the schema's enums. Client and command ids
are never labels.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker.publisher import Outcome
from dispatcher.store.ledger_answers import Answered
from dispatcher.store.ledger_rows import Status
from schemas.catalog import DEFAULT_CATALOG, ComponentEvent
from schemas.messages import AckStatus, PublishReport, Reason, RefusalReason

OTHER = "other"  # the label of any component or event this dispatcher does not know
_EVENT = ("component", "event")  # the labels of every per-event family

# Publish -> ack: tens of milliseconds on a quiet broker, minutes for a busy client.
# Between 10 ms and 62 s neighbouring bounds differ by at most 20%, so a quantile that
# Prometheus interpolates in a bucket is within 20% of the exact one wherever storms land.
_FINE_STEPS = (1.0, 1.2, 1.4, 1.6, 1.9, 2.2, 2.6, 3.1, 3.7, 4.4, 5.2, 6.2, 7.4, 8.8)
TRIGGER_BUCKETS = (
    0.005,
    *(
        round(step * decade, 4)
        for decade in (0.01, 0.1, 1.0, 10.0)
        for step in _FINE_STEPS
        if step * decade <= 62
    ),
    120,
    300,
    900,
    3600,
)
# A signal may wait for a deferral: up to a day, where coarse buckets are enough.
SIGNAL_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    *(7200, 14400, 28800, 86400),
)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
# Publish -> agent received: milliseconds when the client is online.
DELIVERY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    60,
    300,
    3600,
)
# A deferral lasts as long as a software distribution: minutes to hours.
DEFERRAL_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


PROBE_CLASSES = ("lock", "process", "marker", "command")
FINAL_STATUSES = tuple(s.value for s in AckStatus if s.final)
# Why the collector dropped a message: the codec's reasons and the collector's own.
BAD_MESSAGE_REASONS = (
    Reason.BAD_MSGPACK.value,
    Reason.BAD_MESSAGE.value,
    Reason.UNSUPPORTED_VERSION.value,
    "unexpected-type",
    "unhandled",
)
# Publish reports remembered to count each once: far more than arrive between two
# redeliveries, and bounded whatever a publisher sends.
REPORTS_REMEMBERED = 4096


def probe_class(detail: str | None) -> str:
    """The guard probe a deferral names, as a bounded label (detail is free text)."""
    words = (detail or "").replace(":", " ").split()
    return next((w for w in words if w in PROBE_CLASSES), "other")


def known_events(extra: Iterable[ComponentEvent] = ()) -> frozenset[tuple[str, str]]:
    """(component, event) pairs that may be labels: the catalog's and ``extra``."""
    pairs = {(c.name, e) for c in DEFAULT_CATALOG for e in c.events}
    return frozenset(pairs | {(e.component, e.event) for e in extra})


class DispatcherMetrics:
    """All dispatcher-side metrics, registered in the registry it is given."""

    def __init__(
        self, registry: CollectorRegistry, events: frozenset[tuple[str, str]] | None = None
    ) -> None:
        self.registry = registry
        self._events = events if events is not None else known_events()
        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        histogram = functools.partial(Histogram, registry=registry)
        self.trigger_latency = histogram(
            "setevnt_trigger_latency_seconds",
            "Command publish to its final ack received, on the dispatcher's clock.",
            [*_EVENT, "status"],
            buckets=TRIGGER_BUCKETS,
        )
        self.delivery_latency = histogram(
            "setevnt_delivery_latency_seconds",
            "Command publish to the agent receiving it (dispatcher and agent clocks).",
            _EVENT,
            buckets=DELIVERY_BUCKETS,
        )
        self.signal_latency = histogram(
            "setevnt_signal_latency_seconds",
            "Command publish to the component being signalled, deferrals included.",
            _EVENT,
            buckets=SIGNAL_BUCKETS,
        )
        self.deferrals = counter(
            "setevnt_deferrals_total",
            "Commands an agent deferred because a software distribution was running.",
            [*_EVENT, "reason"],
        )
        self.deferral_time = histogram(
            "setevnt_deferral_seconds",
            "How long deferred commands waited before they ran, expired or coalesced.",
            [*_EVENT, "status"],
            buckets=DEFERRAL_BUCKETS,
        )
        self.component_run = histogram(
            "setevnt_component_run_seconds",
            "How long the component took to run the event, as the agent measured it.",
            _EVENT,
            buckets=RUN_BUCKETS,
        )
        self.outcomes = counter(
            "setevnt_command_outcomes_total",
            "Final acks received, by outcome.",
            [*_EVENT, "status"],
        )
        self.rejects = counter(
            "setevnt_command_rejects_total", "Commands an agent did not run, by reason.", ["reason"]
        )
        self.published = counter(
            "setevnt_commands_published_total",
            "Commands published by any dispatcher, by broker outcome.",
            [*_EVENT, "result"],
        )
        self.confirm_latency = histogram(
            "setevnt_publish_confirm_seconds",
            "Publish to broker confirm, for this process's publishes.",
            ["result"],
            buckets=CONFIRM_BUCKETS,
        )
        self.reconnects = counter(
            "setevnt_broker_reconnects_total",
            "Broker connections re-opened after a loss.",
            ["role"],
        )
        self.node_resends = counter(
            "setevnt_waiting_node_total",
            "One-off commands that waited for their queue's cluster node, by what became of "
            "them: sent, expired, unroutable (the queue is gone).",
            ["result"],
        )
        self.bad_messages = counter(
            "setevnt_collector_bad_messages_total",
            "Messages on the ack path that could not be decoded.",
            ["reason"],
        )
        self.dropped_acks = counter(
            "setevnt_acks_dropped_total",
            "Acks not counted because their sender (AMQP user_id) is not their client.",
            ["reason"],
        )
        self.dropped_heartbeats = counter(
            "setevnt_heartbeats_dropped_total",
            "Hellos and heartbeats not recorded because their sender (AMQP user_id) is not "
            "their client.",
            ["reason"],
        )
        self.dropped_reports = counter(
            "setevnt_reports_dropped_total",
            "Publish reports and issued-command records not counted because their sender "
            "(AMQP user_id) is not a dispatcher.",
            ["reason"],
        )
        self.duplicates = counter(
            "setevnt_duplicate_acks_total",
            "Final acks received again for a command already counted (redeliveries).",
        )
        self.fleet_clients = gauge(
            "setevnt_fleet_clients",
            "Clients in the fleet registry, online or offline (missed heartbeats, goodbye).",
            ["status"],
        )
        self.provisioned = counter(
            "setevnt_clients_provisioned_total",
            "Client command queues declared: new clients, and hellos of known ones.",
        )
        self.requests = counter(
            "setevnt_requests_total",
            "Trigger requests taken from setevnt.requests, by outcome and refusal reason.",
            ["outcome", "reason"],
        )
        self._reports_seen: OrderedDict[PublishReport, None] = OrderedDict()
        self._zeroes()

    def _zeroes(self) -> None:
        """Every bounded counter series, at 0 from the start.

        Prometheus counts no increase from a series' first sample: a series that appeared
        with its first storm, at that storm's count, would hide the storm from every
        ``increase`` and ``rate`` (and an alert on them) after each restart.
        """
        for component, event in sorted(self._events | {(OTHER, OTHER)}):
            for result in Outcome:
                self.published.labels(component, event, result.value)
            for status in FINAL_STATUSES:
                self.outcomes.labels(component, event, status)
            for probe in (*PROBE_CLASSES, OTHER):
                self.deferrals.labels(component, event, probe)
            # The series the dashboard's quantiles and the latency alert read.
            self.trigger_latency.labels(component, event, AckStatus.DONE.value)
        for reason in Reason:
            self.rejects.labels(reason.value)
        for name in BAD_MESSAGE_REASONS:
            self.bad_messages.labels(name)
        for name in ("missing-user-id", "wrong-user-id", "unknown-command"):
            self.dropped_acks.labels(name)
        for name in ("missing-user-id", "wrong-user-id"):
            self.dropped_heartbeats.labels(name)
        self.dropped_reports.labels("not-a-dispatcher")
        for role in ("collector", "publisher"):
            self.reconnects.labels(role)
        for outcome in ("accepted", "replayed"):
            self.requests.labels(outcome, "none")
        for refusal in RefusalReason:
            self.requests.labels("refused", refusal.value)

    def labels(self, component: str | None, event: str | None) -> tuple[str, str]:
        if (component, event) in self._events:
            return component or OTHER, event or OTHER
        return OTHER, OTHER

    # -- collector hooks ----------------------------------------------------------------

    def answered(self, answer: Answered) -> None:
        """An ack the ledger took; its labels are its command's, from the ledger."""
        ack = answer.ack
        component, event = self.labels(answer.component, answer.event)
        if not ack.final:
            self.deferrals.labels(component, event, probe_class(ack.detail)).inc()
            return
        self.outcomes.labels(component, event, ack.status).inc()
        if answer.latency is not None:
            self.trigger_latency.labels(component, event, ack.status).observe(answer.latency)
        self._agent_timings(answer, component, event)
        if ack.reason is not None and ack.status != AckStatus.DONE:
            self.rejects.labels(ack.reason).inc()
        if answer.previous == Status.DEFERRED and ack.wait_seconds is not None:
            self.deferral_time.labels(component, event, ack.status).observe(ack.wait_seconds)

    def _agent_timings(self, answer: Answered, component: str, event: str) -> None:
        ack, issued_at = answer.ack, answer.issued_at
        if issued_at is not None:
            delivered = max(0.0, ack.received_at - issued_at)
            self.delivery_latency.labels(component, event).observe(delivered)
            if ack.started_at is not None:
                signalled = max(0.0, ack.started_at - issued_at)
                self.signal_latency.labels(component, event).observe(signalled)
        if ack.run_seconds is not None:
            self.component_run.labels(component, event).observe(ack.run_seconds)

    def ack_dropped(self, reason: str, count: int = 1) -> None:
        self.dropped_acks.labels(reason).inc(count)

    def heartbeat_dropped(self, reason: str) -> None:
        self.dropped_heartbeats.labels(reason).inc()

    def report_dropped(self, reason: str) -> None:
        self.dropped_reports.labels(reason).inc()

    def duplicate_acks(self, count: int) -> None:
        self.duplicates.inc(count)

    def publish_report(self, report: PublishReport) -> None:
        """Counted once: the same report again (a redelivery, or a publisher's re-send
        after a lost confirm) is the same publisher, time and counts."""
        if report in self._reports_seen:
            return
        self._reports_seen[report] = None
        if len(self._reports_seen) > REPORTS_REMEMBERED:
            self._reports_seen.popitem(last=False)
        for count in report.counts:
            component, event = self.labels(count.component, count.event)
            self.published.labels(component, event, count.result).inc(count.count)

    def bad_message(self, reason: str) -> None:
        self.bad_messages.labels(reason).inc()

    def reconnected_collector(self) -> None:
        self.reconnects.labels("collector").inc()

    # -- intake hooks (dispatcher.service.intake.IntakeHooks) ------------------------------------

    def request_handled(self, outcome: str, reason: str) -> None:
        """``outcome``: accepted, replayed or refused; ``reason``: a RefusalReason or none."""
        self.requests.labels(outcome, reason).inc()

    # -- registry hooks (dispatcher.service.recorder.RecorderHooks) ------------------------------

    def clients_provisioned(self, count: int) -> None:
        self.provisioned.inc(count)

    def fleet_size(self, online: int, offline: int) -> None:
        self.fleet_clients.labels("online").set(online)
        self.fleet_clients.labels("offline").set(offline)

    # -- publisher hooks (broker.publisher.PublishHooks) ---------------------------------

    def confirmed(self, outcome: Outcome, seconds: float) -> None:
        self.confirm_latency.labels(outcome.value).observe(seconds)

    def waiting_node_settled(self, result: str, count: int) -> None:
        self.node_resends.labels(result).inc(count)

    def reconnected(self) -> None:
        self.reconnects.labels("publisher").inc()
