"""Prometheus metrics as hooks: the collector and publisher call these, nothing else does.

Label values are bounded by construction: component and event come from the ledger row
of the command (never from what a client sends) and are checked against the events this
dispatcher knows (its catalog and its upgrade event), anything else is ``other``;
status, reason and publish result come from the schema's enums. Client and command ids
are never labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker.publisher import Outcome
from dispatcher.ledger_answers import Answered
from schemas.catalog import DEFAULT_CATALOG, ComponentEvent
from schemas.messages import PublishReport

OTHER = "other"  # the label of any component or event this dispatcher does not know

# Publish -> ack: tens of milliseconds on a quiet broker, minutes for a busy client.
TRIGGER_BUCKETS = (
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
    30,
    60,
    300,
    900,
    3600,
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
        self.trigger_latency = Histogram(
            "setevnt_trigger_latency_seconds",
            "Command publish to its final ack received, on the dispatcher's clock.",
            ["component", "event", "status"],
            buckets=TRIGGER_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "setevnt_delivery_latency_seconds",
            "Command publish to the agent receiving it (dispatcher and agent clocks).",
            ["component", "event"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.signal_latency = Histogram(
            "setevnt_signal_latency_seconds",
            "Command publish to the component being signalled, deferrals included.",
            ["component", "event"],
            buckets=(*TRIGGER_BUCKETS, 7200, 14400, 28800, 86400),
            registry=registry,
        )
        self.deferrals = Counter(
            "setevnt_deferrals_total",
            "Commands an agent deferred because a software distribution was running.",
            ["component", "event", "reason"],
            registry=registry,
        )
        self.deferral_time = Histogram(
            "setevnt_deferral_seconds",
            "How long deferred commands waited before they ran, expired or coalesced.",
            ["component", "event", "status"],
            buckets=DEFERRAL_BUCKETS,
            registry=registry,
        )
        self.component_run = Histogram(
            "setevnt_component_run_seconds",
            "How long the component took to run the event, as the agent measured it.",
            ["component", "event"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "setevnt_command_outcomes_total",
            "Final acks received, by outcome.",
            ["component", "event", "status"],
            registry=registry,
        )
        self.rejects = Counter(
            "setevnt_command_rejects_total",
            "Commands an agent did not run, by reason.",
            ["reason"],
            registry=registry,
        )
        self.published = Counter(
            "setevnt_commands_published_total",
            "Commands published by any dispatcher, by broker outcome.",
            ["component", "event", "result"],
            registry=registry,
        )
        self.confirm_latency = Histogram(
            "setevnt_publish_confirm_seconds",
            "Publish to broker confirm, for this process's publishes.",
            ["result"],
            buckets=CONFIRM_BUCKETS,
            registry=registry,
        )
        self.reconnects = Counter(
            "setevnt_broker_reconnects_total",
            "Broker connections re-opened after a loss.",
            ["role"],
            registry=registry,
        )
        for role in ("collector", "publisher"):
            self.reconnects.labels(role)  # export 0 before the first reconnect, not nothing
        self.bad_messages = Counter(
            "setevnt_collector_bad_messages_total",
            "Messages on the ack path that could not be decoded.",
            ["reason"],
            registry=registry,
        )
        self.dropped_acks = Counter(
            "setevnt_acks_dropped_total",
            "Acks not counted because their sender (AMQP user_id) is not their client.",
            ["reason"],
            registry=registry,
        )
        self.dropped_heartbeats = Counter(
            "setevnt_heartbeats_dropped_total",
            "Hellos and heartbeats not recorded because their sender (AMQP user_id) is not "
            "their client.",
            ["reason"],
            registry=registry,
        )
        self.dropped_reports = Counter(
            "setevnt_reports_dropped_total",
            "Publish reports and issued-command records not counted because their sender "
            "(AMQP user_id) is not a dispatcher.",
            ["reason"],
            registry=registry,
        )
        for reason in ("missing-user-id", "wrong-user-id", "unknown-command"):
            self.dropped_acks.labels(reason)  # 0 until it happens, not an empty panel
        for reason in ("missing-user-id", "wrong-user-id"):
            self.dropped_heartbeats.labels(reason)
        self.dropped_reports.labels("not-a-dispatcher")
        self.duplicates = Counter(
            "setevnt_duplicate_acks_total",
            "Final acks received again for a command already counted (redeliveries).",
            registry=registry,
        )
        self.fleet_clients = Gauge(
            "setevnt_fleet_clients",
            "Clients in the fleet registry, online or offline (missed heartbeats, goodbye).",
            ["status"],
            registry=registry,
        )
        self.provisioned = Counter(
            "setevnt_clients_provisioned_total",
            "Client command queues declared: new clients, and hellos of known ones.",
            registry=registry,
        )
        self.requests = Counter(
            "setevnt_requests_total",
            "Trigger requests taken from setevnt.requests, by outcome and refusal reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        for outcome in ("accepted", "replayed"):
            self.requests.labels(outcome, "none")  # 0 before the first request

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
        if ack.reason is not None and ack.status != "done":
            self.rejects.labels(ack.reason).inc()
        if answer.previous == "deferred" and ack.wait_seconds is not None:
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
        for count in report.counts:
            component, event = self.labels(count.component, count.event)
            self.published.labels(component, event, count.result).inc(count.count)

    def bad_message(self, reason: str) -> None:
        self.bad_messages.labels(reason).inc()

    def reconnected_collector(self) -> None:
        self.reconnects.labels("collector").inc()

    # -- intake hooks (dispatcher.intake.IntakeHooks) ------------------------------------

    def request_handled(self, outcome: str, reason: str) -> None:
        """``outcome``: accepted, replayed or refused; ``reason``: a RefusalReason or none."""
        self.requests.labels(outcome, reason).inc()

    # -- registry hooks (dispatcher.recorder.RecorderHooks) ------------------------------

    def clients_provisioned(self, count: int) -> None:
        self.provisioned.inc(count)

    def fleet_size(self, online: int, offline: int) -> None:
        self.fleet_clients.labels("online").set(online)
        self.fleet_clients.labels("offline").set(offline)

    # -- publisher hooks (broker.publisher.PublishHooks) ---------------------------------

    def confirmed(self, outcome: Outcome, seconds: float) -> None:
        self.confirm_latency.labels(outcome.value).observe(seconds)

    def reconnected(self) -> None:
        self.reconnects.labels("publisher").inc()
