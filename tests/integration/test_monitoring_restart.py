"""The first of everything after `serve` restarts, as a real Prometheus sees it.

Prometheus counts no increase from a series' first sample, so a counter that first
appears at its total is invisible to every `increase`, `rate` and alert on it. Here a
real Prometheus scrapes `serve` before and after a restart; the first storm after it must
show on the dashboard while it publishes and once it is done, with a p99 close to the
storm's exact one, and the first unroutable command must fire its alert and reach the
deployed Alertmanager's receiver.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import Dispatcher
from tests.integration.fleet import Fleet, storm_id_of
from tests.integration.helpers import Process, wait_for
from tests.integration.monitoring import (
    DEPLOY,
    Alertmanager,
    Imported,
    Prometheus,
    dashboard,
    free_port,
    has_numbers,
    write_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]
CLIENTS = 60
RUN_SECONDS = "0.5"  # every latency just above half a second: one old bucket held them all
RATE = "15/s"  # four seconds of publishing: reports while the storm runs
STORM = {"component": "CCIM32", "event": "STARTCYCLE"}


def _published(port: int) -> float:
    """The service's own count of the storm's commands sent, read from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "setevnt_commands_published_total" and sample.labels == {
                **STORM,
                "result": "sent",
            }:
                return float(sample.value)
    return 0.0  # not exported (yet)


def _seen_while_running(storm: Process, port: int) -> float:
    """A count between none and all, read while the storm process still runs."""

    def partial() -> float | None:
        running = storm.proc.poll() is None
        count = _published(port)
        if 0 < count < CLIENTS and running:
            return count
        if not running:
            raise AssertionError(f"the storm ended before any report reached serve ({count})")
        return None

    seen: float = wait_for(partial, 30, "a publish report while the storm runs")
    return seen


def _value(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    values = [float(s["value"][1]) for s in result.get("data", {}).get("result", [])]
    return values[0] if values else None


def _panel(imported: Imported, title: str, legend_index: int = 0) -> str:
    return [expr for t, expr in imported.panels if t == title][legend_index]


def test_the_first_storm_and_unroutable_command_after_a_restart_show(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    fleet = Fleet(amqp_url, tmp_path)
    port = free_port()
    prometheus: Prometheus | None = None
    alertmanager: Alertmanager | None = None
    # A window that holds the whole storm and nothing of the process before the restart.
    imported = Imported(
        dashboard(),
        {"prometheus-of-another-site": "prometheus"},
        {"$__rate_interval": "1m", "$__range": "1m", "$__interval": "15s"},
    )
    try:
        before = fleet.serve("--metrics-port", str(port))
        fleet.simulate(CLIENTS, "--duration", RUN_SECONDS, "--workers", str(CLIENTS), prefix="RST")
        alertmanager = Alertmanager(DEPLOY / "alertmanager/alertmanager.yml", tmp_path)
        config = write_config(tmp_path, port, vhost, alertmanager=alertmanager.port)
        prometheus = Prometheus(config, tmp_path)
        wait_for(prometheus.targets_up, 30, "every scrape target up")
        wait_for(lambda: len(fleet.clients()) >= CLIENTS, 30, "the fleet registered")

        before.terminate()
        restarted_at = time.time()
        fleet.serve("--metrics-port", str(port))
        created = f"setevnt_duplicate_acks_created > {restarted_at}"
        wait_for(lambda: has_numbers(prometheus.query(created)), 30, "a scrape of the new serve")

        storm = fleet.start_storm("CCIM32_STARTCYCLE", "--all", "--rate", RATE, "--json")
        during = _seen_while_running(storm, port)
        assert storm.proc.wait(timeout=60) == 0, storm.output
        outcome = json.loads(storm.lines[-1])
        assert outcome["published"] == CLIENTS, outcome
        storm_id = storm_id_of(storm.lines) or outcome["storm_id"]
        exact_p99 = float(fleet.status(storm_id)["latency_s"]["p99"])

        latencies = 'sum(setevnt_trigger_latency_seconds_count{status="done"})'
        wait_for(lambda: _value(prometheus, latencies) == CLIENTS, 30, "every ack scraped")
        published = _value(prometheus, _panel(imported, "Commands published"))
        by_outcome = prometheus.query(_panel(imported, "Commands published by broker outcome"))
        dashboard_p99 = _value(prometheus, _panel(imported, "Trigger latency p50 / p95 / p99", 2))

        with Dispatcher(amqp_url) as dispatcher:
            (receipt,) = dispatcher.trigger(["RST-GHOST"], "CQMGR32_STARTCYCLE")
        assert receipt.status == "unroutable"
        firing = 'ALERTS{alertname="SetevntUnroutableCommands", alertstate="firing"}'
        wait_for(lambda: has_numbers(prometheus.query(firing)), 30, "the unroutable alert")
        routed = wait_for(
            lambda: alertmanager.alerts("SetevntUnroutableCommands"), 30, "the alert routed"
        )
    finally:
        if prometheus is not None:
            prometheus.stop()
        if alertmanager is not None:
            alertmanager.stop()
        fleet.stop()

    print(
        f"\nfirst storm after a restart: {during:.0f} of {CLIENTS} counted while it ran, "
        f"{published} on the dashboard; p99 {dashboard_p99} s on the dashboard, "
        f"{exact_p99} s exact"
    )
    assert published is not None and published > 0, "the first storm is missing"
    sent = [s for s in by_outcome["data"]["result"] if s["metric"].get("result") == "sent"]
    assert sent and float(sent[0]["value"][1]) > 0, by_outcome
    assert dashboard_p99 == pytest.approx(exact_p99, rel=0.2)
    assert [r["name"] for r in routed[0]["receivers"]] == ["operators"]
    assert routed[0]["annotations"]["runbook_url"].startswith("docs/runbook.md#")
