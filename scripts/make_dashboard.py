#!/usr/bin/env python3
"""Generate deploy/grafana/dashboards/setevnt.json from the panel list below.

The dashboard is data derived from this list so panels stay uniform; every expression in
it is proven against a real Prometheus by tests/integration/test_monitoring.py.
``--check`` exits 1 when the committed JSON differs from what this script generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/setevnt.json"
DATASOURCE = {"type": "prometheus", "uid": "setevnt-prometheus"}
RATE = "$__rate_interval"


def quantiles(metric: str, selector: str = "") -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{selector}[{RATE}])))",
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


# (title, panel type, unit, [(expr, legend)], width)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int]] = [
    (
        "Trigger latency (publish to ack), heatmap",
        "heatmap",
        "s",
        [
            (
                "sum by (le) (increase(setevnt_trigger_latency_seconds_bucket"
                f'{{status="done"}}[{RATE}]))',
                "{{le}}",
            )
        ],
        12,
    ),
    (
        "Trigger latency p50 / p95 / p99",
        "timeseries",
        "s",
        quantiles("setevnt_trigger_latency_seconds", '{status="done"}'),
        12,
    ),
    (
        "Outcomes by status",
        "timeseries",
        "ops",
        [(f"sum by (status) (rate(setevnt_command_outcomes_total[{RATE}]))", "{{status}}")],
        12,
    ),
    (
        "Rejects by reason",
        "timeseries",
        "ops",
        [(f"sum by (reason) (rate(setevnt_command_rejects_total[{RATE}]))", "{{reason}}")],
        12,
    ),
    (
        "Deferrals by probe",
        "timeseries",
        "ops",
        [(f"sum by (reason) (rate(setevnt_deferrals_total[{RATE}]))", "{{reason}}")],
        12,
    ),
    (
        "Time deferred p50 / p95 / p99",
        "timeseries",
        "s",
        quantiles("setevnt_deferral_seconds"),
        12,
    ),
    (
        "Delivery latency (publish to agent) p50 / p95 / p99",
        "timeseries",
        "s",
        quantiles("setevnt_delivery_latency_seconds"),
        12,
    ),
    (
        "Component run time p50 / p95 / p99",
        "timeseries",
        "s",
        quantiles("setevnt_component_run_seconds"),
        12,
    ),
    (
        "Commands published by broker outcome",
        "timeseries",
        "ops",
        [
            (
                f"sum by (result) (rate(setevnt_commands_published_total[{RATE}]))",
                "{{result}}",
            )
        ],
        12,
    ),
    (
        "Broker reconnects",
        "timeseries",
        "short",
        [(f"sum by (role) (increase(setevnt_broker_reconnects_total[{RATE}]))", "{{role}}")],
        12,
    ),
    (
        "Storm progress (running and recent storms)",
        "timeseries",
        "short",
        [("sum by (status) (setevnt_storm_commands)", "{{status}}")],
        12,
    ),
    (
        "Storms by state",
        "timeseries",
        "short",
        [("sum by (state) (setevnt_storms)", "{{state}}")],
        12,
    ),
    (
        "Commands in flight",
        "timeseries",
        "short",
        [("sum(setevnt_commands_in_flight)", "in flight")],
        12,
    ),
    (
        "Fleet: clients online and offline",
        "timeseries",
        "short",
        [("sum by (status) (setevnt_fleet_clients)", "{{status}}")],
        12,
    ),
    (
        "CopyListVersion: clients drifted and at the site's version",
        "timeseries",
        "short",
        [
            ("sum by (state) (setevnt_clients_drifted)", "drifted ({{state}})"),
            ("sum(setevnt_clients_site_version)", "at the site's version"),
        ],
        12,
    ),
    (
        "Upgrade of drifted clients: commands by status",
        "timeseries",
        "short",
        [("sum by (status) (setevnt_upgrade_commands)", "{{status}}")],
        12,
    ),
    (
        "Acks and heartbeats dropped: sender is not the client",
        "timeseries",
        "short",
        [
            (f"sum by (reason) (increase(setevnt_acks_dropped_total[{RATE}]))", "ack {{reason}}"),
            (
                f"sum by (reason) (increase(setevnt_heartbeats_dropped_total[{RATE}]))",
                "heartbeat {{reason}}",
            ),
        ],
        12,
    ),
    (
        "Broker queue depth",
        "timeseries",
        "short",
        [
            ("sum(rabbitmq_queue_messages_ready)", "all queues (ready)"),
            ("sum by (queue) (rabbitmq_detailed_queue_messages_ready)", "{{queue}}"),
        ],
        12,
    ),
    (
        "Dead letters (expired or rejected commands)",
        "timeseries",
        "short",
        [('sum(rabbitmq_detailed_queue_messages{queue="setevnt.dead"})', "setevnt.dead")],
        12,
    ),
    (
        "Trigger requests from services, by outcome",
        "timeseries",
        "short",
        [
            (
                f"sum by (outcome, reason) (increase(setevnt_requests_total[{RATE}]))",
                "{{outcome}} {{reason}}",
            )
        ],
        12,
    ),
]


def panel(index: int, spec: tuple[str, str, str, list[tuple[str, str]], int]) -> dict[str, Any]:
    title, kind, unit, targets, width = spec
    x = 0 if index % 2 == 0 else 12
    built: dict[str, Any] = {
        "id": index + 1,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": x, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                **({"format": "heatmap"} if kind == "heatmap" else {}),
            }
            for n, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "heatmap":
        built["options"] = {"calculate": False, "yAxis": {"unit": unit}}
    return built


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
        "panels": [panel(i, spec) for i, spec in enumerate(PANELS)],
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
    print(f"wrote {OUT} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
