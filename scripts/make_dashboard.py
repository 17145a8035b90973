#!/usr/bin/env python3
"""Generate deploy/grafana/dashboards/setevnt.json from the rows and panels below.

The dashboard is data derived from this list so panels stay uniform. It names no
datasource of its own: every panel, variable and annotation reads the Prometheus the
viewer picks in ``$datasource``, so it works imported into any Grafana. Every expression
in it is proven against a real Prometheus by tests/integration/test_monitoring.py.
``--check`` exits 1 when the committed JSON differs from what this script generates.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/setevnt.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# The component and event the viewer picked (every one by default).
PICKED = 'component=~"$component", event=~"$event"'


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    kind: str  # timeseries | heatmap | stat
    unit: str
    targets: tuple[Target, ...]
    width: int = 12
    height: int = 8


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def quantiles(metric: str, selector: str) -> tuple[Target, ...]:
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


def series(title: str, unit: str, *targets: tuple[str, str]) -> Panel:
    return Panel(title, "timeseries", unit, tuple(Target(e, legend) for e, legend in targets))


def stat(title: str, expr: str) -> Panel:
    return Panel(title, "stat", "short", (Target(expr, title),), width=4, height=4)


def picked_total(metric: str, selector: str) -> str:
    """How many in the dashboard's time range, for the picked components and events."""
    return f"sum(increase({metric}{{{selector}, {PICKED}}}[$__range]))"


ROWS: tuple[Row, ...] = (
    Row(
        "Overview (the dashboard's time range)",
        (
            stat(
                "Commands published",
                picked_total("setevnt_commands_published_total", 'result="sent"'),
            ),
            stat("Done", picked_total("setevnt_command_outcomes_total", 'status="done"')),
            stat(
                "Failed, rejected, expired",
                picked_total("setevnt_command_outcomes_total", 'status=~"failed|rejected|expired"'),
            ),
            stat(
                "Unroutable",
                picked_total("setevnt_commands_published_total", 'result="unroutable"'),
            ),
            stat("In flight now", "sum(setevnt_commands_in_flight)"),
            stat("Storms running now", 'sum(setevnt_storms{state="running"})'),
        ),
    ),
    Row(
        "Trigger latency",
        (
            Panel(
                "Trigger latency (publish to ack), heatmap",
                "heatmap",
                "s",
                (
                    Target(
                        "sum by (le) (increase(setevnt_trigger_latency_seconds_bucket"
                        f'{{status="done", {PICKED}}}[{RATE}]))',
                        "{{le}}",
                    ),
                ),
            ),
            Panel(
                "Trigger latency p50 / p95 / p99",
                "timeseries",
                "s",
                quantiles("setevnt_trigger_latency_seconds", f'status="done", {PICKED}'),
            ),
        ),
    ),
    Row(
        "Commands",
        (
            series(
                "Commands published by broker outcome",
                "ops",
                (
                    f"sum by (result) (rate(setevnt_commands_published_total{{{PICKED}}}[{RATE}]))",
                    "{{result}}",
                ),
            ),
            series(
                "Outcomes by status",
                "ops",
                (
                    f"sum by (status) (rate(setevnt_command_outcomes_total{{{PICKED}}}[{RATE}]))",
                    "{{status}}",
                ),
            ),
            series(
                "Rejects by reason",
                "ops",
                (f"sum by (reason) (rate(setevnt_command_rejects_total[{RATE}]))", "{{reason}}"),
            ),
            series(
                "Dead letters (expired or rejected commands)",
                "short",
                ('sum(rabbitmq_detailed_queue_messages{queue="setevnt.dead"})', "setevnt.dead"),
            ),
        ),
    ),
    Row(
        "Agents",
        (
            series(
                "Deferrals by probe",
                "ops",
                (
                    f"sum by (reason) (rate(setevnt_deferrals_total{{{PICKED}}}[{RATE}]))",
                    "{{reason}}",
                ),
            ),
            Panel(
                "Time deferred p50 / p95 / p99",
                "timeseries",
                "s",
                quantiles("setevnt_deferral_seconds", PICKED),
            ),
            Panel(
                "Delivery latency (publish to agent) p50 / p95 / p99",
                "timeseries",
                "s",
                quantiles("setevnt_delivery_latency_seconds", PICKED),
            ),
            Panel(
                "Component run time p50 / p95 / p99",
                "timeseries",
                "s",
                quantiles("setevnt_component_run_seconds", PICKED),
            ),
        ),
    ),
    Row(
        "Storms",
        (
            series(
                "Storm progress (running and recent storms)",
                "short",
                ("sum by (status) (setevnt_storm_commands)", "{{status}}"),
            ),
            series("Storms by state", "short", ("sum by (state) (setevnt_storms)", "{{state}}")),
            series("Commands in flight", "short", ("sum(setevnt_commands_in_flight)", "in flight")),
        ),
    ),
    Row(
        "Fleet",
        (
            series(
                "Fleet: clients online and offline",
                "short",
                ("sum by (status) (setevnt_fleet_clients)", "{{status}}"),
            ),
            series(
                "CopyListVersion: clients drifted and at the site's version",
                "short",
                ("sum by (state) (setevnt_clients_drifted)", "drifted ({{state}})"),
                ("sum(setevnt_clients_site_version)", "at the site's version"),
            ),
            series(
                "Upgrade of drifted clients: commands by status",
                "short",
                ("sum by (status) (setevnt_upgrade_commands)", "{{status}}"),
            ),
        ),
    ),
    Row(
        "Broker",
        (
            series(
                "Broker queue depth",
                "short",
                ("sum(rabbitmq_queue_messages_ready)", "all queues (ready)"),
                ("sum by (queue) (rabbitmq_detailed_queue_messages_ready)", "{{queue}}"),
            ),
            series(
                "Acks waiting for the collector (setevnt.acks)",
                "short",
                ('sum(rabbitmq_detailed_queue_messages{queue="setevnt.acks"})', "setevnt.acks"),
            ),
            series(
                "Broker alarms (publishing blocked while 1)",
                "short",
                ("max(rabbitmq_alarms_memory_used_watermark)", "memory"),
                ("max(rabbitmq_alarms_free_disk_space_watermark)", "disk"),
            ),
            series(
                "Broker reconnects",
                "short",
                (f"sum by (role) (increase(setevnt_broker_reconnects_total[{RATE}]))", "{{role}}"),
            ),
        ),
    ),
    Row(
        "Senders and requests",
        (
            series(
                "Acks and heartbeats dropped: sender is not the client",
                "short",
                (
                    f"sum by (reason) (increase(setevnt_acks_dropped_total[{RATE}]))",
                    "ack {{reason}}",
                ),
                (
                    f"sum by (reason) (increase(setevnt_heartbeats_dropped_total[{RATE}]))",
                    "heartbeat {{reason}}",
                ),
            ),
            series(
                "Trigger requests from services, by outcome",
                "short",
                (
                    f"sum by (outcome, reason) (increase(setevnt_requests_total[{RATE}]))",
                    "{{outcome}} {{reason}}",
                ),
            ),
        ),
    ),
)

# Storms on every time axis: a region while any runs, and a mark when one starts (a
# storm shorter than a scrape is never seen running).
ANNOTATIONS = (
    ("Storms running", 'sum(setevnt_storms{state="running"}) > 0', "rgba(255, 152, 48, 0.3)"),
    (
        "Storm started",
        "changes(setevnt_storm_last_started_timestamp_seconds[1m]) > 0",
        "rgba(138, 184, 255, 0.6)",
    ),
)


def variables() -> list[dict[str, Any]]:
    chosen = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        }
    ]
    for name, query in (
        ("component", "label_values(setevnt_commands_published_total, component)"),
        (
            "event",
            'label_values(setevnt_commands_published_total{component=~"$component"}, event)',
        ),
    ):
        chosen.append(
            {
                "name": name,
                "label": name.capitalize(),
                "type": "query",
                "datasource": DATASOURCE,
                "definition": query,
                "query": {"query": query, "refId": f"{name}-values"},
                "refresh": 2,  # when the time range changes: new events appear
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1,
                "hide": 0,
                "regex": "",
                "options": [],
            }
        )
    return chosen


def annotation_queries() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": colour,
            "expr": expr,
            "step": "15s",
            "titleFormat": name,
            "textFormat": "",
            "tagKeys": "",
        }
        for name, expr, colour in ANNOTATIONS
    ]


def panel(ident: int, spec: Panel, x: int, y: int) -> dict[str, Any]:
    built: dict[str, Any] = {
        "id": ident,
        "type": spec.kind,
        "title": spec.title,
        "datasource": DATASOURCE,
        "gridPos": {"h": spec.height, "w": spec.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                **({"format": "heatmap"} if spec.kind == "heatmap" else {}),
                **({"instant": True, "range": False} if spec.kind == "stat" else {}),
            }
            for n, target in enumerate(spec.targets)
        ],
    }
    if spec.kind == "heatmap":
        built["options"] = {"calculate": False, "yAxis": {"unit": spec.unit}}
    if spec.kind == "stat":
        built["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return built


def layout() -> list[dict[str, Any]]:
    """Rows one under another; a row's panels fill 24 columns left to right."""
    placed: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        placed.append(
            {
                "id": len(placed) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x, line = 0, 0
        for spec in row.panels:
            if x + spec.width > 24:
                x, y, line = 0, y + line, 0
            placed.append(panel(len(placed) + 1, spec, x, y))
            x, line = x + spec.width, max(line, spec.height)
        y += line
    return placed


def dashboard() -> dict[str, Any]:
    return {
        "uid": "setevnt-fleet",
        "title": "setevnt: fleet triggers",
        "tags": ["setevnt"],
        "timezone": "browser",
        "schemaVersion": 37,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": annotation_queries()},
        "panels": layout(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run scripts/make_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    count = sum(len(row.panels) for row in ROWS)
    print(f"wrote {OUT} ({len(ROWS)} rows, {count} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
