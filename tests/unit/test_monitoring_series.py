"""What Prometheus needs from the dispatcher to miss nothing: every bounded series from the
start, latency buckets fine enough for a quantile, each publish report counted once, and
storms reported as they publish."""

from __future__ import annotations

import bisect
import math
import random
import time

import pytest
from prometheus_client import CollectorRegistry

from broker.publisher import Outcome, Outgoing
from dispatcher.service.ledger_metrics import LedgerMetrics
from dispatcher.service.metrics import REPORTS_REMEMBERED, TRIGGER_BUCKETS, DispatcherMetrics
from dispatcher.store.ledger import Ledger, LedgerWriter
from dispatcher.store.ledger_answers import Answered
from dispatcher.storms.flow import FlowLimits, Order, StormFlow, Target
from dispatcher.storms.publish_reports import PublishReports
from schemas.catalog import DEFAULT_CATALOG
from schemas.codec import decode
from schemas.messages import Ack, PublishCount, PublishReport, Reason, RefusalReason
from tests.databases import query
from tests.unit.test_storm_flow import Feed


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_bounded_counter_series_is_exported_at_zero_before_anything_happens() -> None:
    registry = CollectorRegistry()
    DispatcherMetrics(registry)
    pairs = [(c.name, e) for c in DEFAULT_CATALOG for e in c.events] + [("other", "other")]
    for component, event in pairs:
        for result in ("sent", "unroutable", "nacked"):
            published = value(
                registry,
                "setevnt_commands_published_total",
                component=component,
                event=event,
                result=result,
            )
            assert published == 0, (component, event, result)
        for status in ("done", "failed", "rejected", "expired", "coalesced"):
            labels = {"component": component, "event": event, "status": status}
            assert value(registry, "setevnt_command_outcomes_total", **labels) == 0
        for probe in ("lock", "process", "marker", "command", "other"):
            labels = {"component": component, "event": event, "reason": probe}
            assert value(registry, "setevnt_deferrals_total", **labels) == 0
        done = {"component": component, "event": event, "status": "done"}
        assert value(registry, "setevnt_trigger_latency_seconds_count", **done) == 0
    for reason in Reason:
        assert value(registry, "setevnt_command_rejects_total", reason=reason.value) == 0
    for refusal in RefusalReason:
        labels = {"outcome": "refused", "reason": refusal.value}
        assert value(registry, "setevnt_requests_total", **labels) == 0
    for reason in ("bad-msgpack", "bad-message", "unexpected-type", "unhandled"):
        assert value(registry, "setevnt_collector_bad_messages_total", reason=reason) == 0


def prometheus_quantile(q: float, observations: list[float]) -> float:
    """histogram_quantile over the trigger buckets, as Prometheus computes it."""
    bounds = [*TRIGGER_BUCKETS, math.inf]
    counts = [0] * len(bounds)
    for seconds in observations:
        counts[bisect.bisect_left(bounds, seconds)] += 1
    rank, below = q * len(observations), 0
    for index, count in enumerate(counts):
        if below + count >= rank:
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - below) / count
        below += count
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(20))
def test_a_p99_read_from_the_buckets_is_within_20_percent_where_storms_land(seed: int) -> None:
    rng = random.Random(seed)
    centre = 10 ** rng.uniform(-1.5, 1.4)  # 30 ms .. 25 s
    latencies = sorted(centre * rng.lognormvariate(0, 0.3) for _ in range(500))
    exact = latencies[math.ceil(0.99 * len(latencies)) - 1]
    assert prometheus_quantile(0.99, latencies) == pytest.approx(exact, rel=0.2)


def test_a_storm_whose_latencies_fit_one_former_bucket_reads_its_p99() -> None:
    """The former buckets held these all in (0.5, 1]: the dashboard read 0.995 s."""
    latencies = [0.505 + 0.01 * n / 500 for n in range(500)]
    assert prometheus_quantile(0.99, latencies) == pytest.approx(0.515, rel=0.2)


def report(publisher: str, count: int, at: float) -> PublishReport:
    return PublishReport(publisher, at, (PublishCount("CCIM32", "STARTCYCLE", "sent", count),))


def test_a_report_delivered_again_is_counted_once_and_memory_stays_bounded() -> None:
    registry = CollectorRegistry()
    metrics = DispatcherMetrics(registry)
    labels = {"component": "CCIM32", "event": "STARTCYCLE", "result": "sent"}
    first = report("storm", 5, 1000.0)
    metrics.publish_report(first)
    metrics.publish_report(first)  # redelivered after the collector lost its channel
    metrics.publish_report(report("storm", 5, 1002.0))  # the next report, the same counts
    assert value(registry, "setevnt_commands_published_total", **labels) == 10
    for n in range(REPORTS_REMEMBERED + 10):
        metrics.publish_report(report("p", 1, 2000.0 + n))
    assert len(metrics._reports_seen) == REPORTS_REMEMBERED


def answered(status: str, latency: float) -> Answered:
    ack = Ack("c", "PC1", status, time.time(), "t")
    return Answered(ack, "CCIM32", "STARTCYCLE", None, "sent", time.time(), time.time(), latency)


def test_latencies_of_the_catalogs_done_series_land_on_the_zero_series() -> None:
    registry = CollectorRegistry()
    metrics = DispatcherMetrics(registry)
    metrics.answered(answered("done", 0.55))
    done = {"component": "CCIM32", "event": "STARTCYCLE", "status": "done"}
    assert value(registry, "setevnt_trigger_latency_seconds_count", **done) == 1
    assert value(registry, "setevnt_trigger_latency_seconds_bucket", **done, le="0.52") == 0
    assert value(registry, "setevnt_trigger_latency_seconds_bucket", **done, le="0.62") == 1


# -- a storm's publish reports ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reporting_flow(
    ledger: Ledger, count: int, every: float = 2.0, clock: Clock | None = None
) -> tuple[StormFlow, LedgerWriter, list[PublishReport]]:
    sent: list[PublishReport] = []
    writer = LedgerWriter(ledger.settings, "storm-t")

    def build(message: PublishReport) -> Outgoing:
        sent.append(message)
        return Outgoing(f"report-{len(sent)}", "setevnt.acks", "report", b"", "publish-report")

    reports = PublishReports(
        "storm-proc", "CCIM32", "STARTCYCLE", build, every=every, clock=clock or Clock()
    )
    flow = StormFlow(
        Order("storm-t", "CCIM32", "STARTCYCLE", False, False, "t"),
        [Target(f"c{n}", f"PC{n}") for n in range(count)],
        FlowLimits(1000, None, None, delivery_wait=30, ttl=60),
        writer,
        Feed(),  # type: ignore[arg-type]
        reports=reports,
    )
    flow.await_answers = False  # as the intake's storms: done once all is confirmed
    return flow, writer, sent


def totals(reports: list[PublishReport]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for r in reports:
        for c in r.counts:
            assert (c.component, c.event) == ("CCIM32", "STARTCYCLE")
            summed[c.result] = summed.get(c.result, 0) + c.count
    return summed


def publish(flow: StormFlow, room: int, outcome: Outcome = Outcome.SENT) -> list[Outgoing]:
    """Hand out what the flow gives, confirm it; returns the reports among it."""
    taken = flow.take(room)
    for message in taken:
        flow.on_outcome(message, Outcome.SENT if message.key.startswith("report") else outcome)
    return [m for m in taken if m.key.startswith("report")]


def test_a_storm_reports_its_publishes_as_it_goes_each_once(ledger: Ledger) -> None:
    clock = Clock()
    flow, writer, sent = reporting_flow(ledger, 40, every=2.0, clock=clock)
    assert publish(flow, 10) == [] and sent == [], "not due yet"
    clock.now = 2.0
    assert len(publish(flow, 10, Outcome.UNROUTABLE)) == 1, "the report takes one slot"
    assert totals(sent) == {"sent": 10}, "the first ten, while the storm still publishes"
    clock.now = 3.0
    assert publish(flow, 10) == [], "the next one is due two seconds after"
    clock.now = 4.0
    assert len(publish(flow, 10)) == 1
    assert totals(sent) == {"sent": 20, "unroutable": 9}
    assert publish(flow, 10) == [], "the last two commands; their report is not due yet"
    assert not flow.finished(), "the last ones are owed to the service"
    assert len(publish(flow, 10)) == 1, "nothing left to publish: due at once"
    assert flow.finished()
    assert totals(sent) == {"sent": 31, "unroutable": 9}, "all forty, each once"
    writer.close()


def test_a_report_is_confirmed_before_the_storm_ends(ledger: Ledger) -> None:
    flow, writer, sent = reporting_flow(ledger, 3)
    for message in flow.take(10):
        flow.on_outcome(message, Outcome.SENT)
    (last,) = flow.take(10)  # nothing left to publish: due at once, whatever the period
    assert not flow.finished(), "its report awaits the broker's confirm"
    flow.on_outcome(last, Outcome.SENT)
    assert flow.finished() and totals(sent) == {"sent": 3}
    writer.close()


def test_a_halted_storm_still_reports_what_it_published(ledger: Ledger) -> None:
    flow, writer, sent = reporting_flow(ledger, 10)
    for message in flow.take(4):
        flow.on_outcome(message, Outcome.SENT)
    flow.halt("stopped by a test")
    assert not flow.finished()
    (last,) = flow.take(10)
    flow.on_outcome(last, Outcome.SENT)
    assert flow.finished() and totals(sent) == {"sent": 4}
    writer.close()


def test_a_resent_command_is_reported_once(ledger: Ledger) -> None:
    flow, writer, sent = reporting_flow(ledger, 2)
    first = flow.take(10)
    flow.on_outcome(first[0], Outcome.SENT)
    flow.on_outcome(first[0], Outcome.SENT)  # confirmed again after a fast-lane re-send
    flow.on_outcome(first[1], Outcome.SENT)
    (last,) = flow.take(10)
    flow.on_outcome(last, Outcome.SENT)
    assert totals(sent) == {"sent": 2}
    writer.close()


def test_a_report_message_says_what_the_collector_counts(ledger: Ledger) -> None:
    sent: list[Outgoing] = []

    def build(message: PublishReport) -> Outgoing:
        from schemas.codec import encode

        out = Outgoing("r", "setevnt.acks", "report", encode(message), "publish-report")
        sent.append(out)
        return out

    reports = PublishReports("storm-proc", "CCIM32", "STARTCYCLE", build, every=60)
    reports.count(Outcome.SENT)
    reports.count(Outcome.NACKED)
    assert reports.take(last=False) is None, "not due before its period"
    message = reports.take(last=True)
    assert message is not None and reports.owns("r") and reports.owed()
    assert reports.take(last=True) is None, "one report in flight at a time"
    decoded = decode(sent[0].body, PublishReport)
    assert decoded.publisher == "storm-proc"
    assert {(c.result, c.count) for c in decoded.counts} == {("sent", 1), ("nacked", 1)}
    reports.settled(Outcome.SENT)
    assert not reports.owed()


# -- storms in the ledger -------------------------------------------------------------------


def test_a_storm_whose_process_stopped_heartbeating_counts_as_interrupted(
    ledger: Ledger,
) -> None:
    metrics = LedgerMetrics(ledger.settings)
    registry = CollectorRegistry()
    registry.register(metrics)
    assert value(registry, "setevnt_storms", state="running") == 1
    started = value(registry, "setevnt_storm_last_started_timestamp_seconds")
    assert started is not None and abs(started - time.time()) < 60
    # Its process died a minute ago.
    query(ledger.settings, "UPDATE storms SET heartbeat_at = heartbeat_at - 60")
    assert value(registry, "setevnt_storms", state="running") == 0
    assert value(registry, "setevnt_storms", state="interrupted") == 1
