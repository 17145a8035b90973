"""Every dashboard query and alert rule, proven against a real Prometheus.

Debian's prometheus scrapes a live `setevnt-dispatcher serve` and the broker's own
rabbitmq_prometheus endpoint while real agents answer real commands; then each PromQL
expression from deploy/ is evaluated through Prometheus' HTTP API.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import Dispatcher
from tests.integration.helpers import Process, start_agent, wait_for
from tests.integration.monitoring import (
    DEPLOY,
    Prometheus,
    alert_expressions,
    dashboard_expressions,
    free_port,
    has_numbers,
    promtool,
    write_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]
TRAFFIC_SECONDS = 6.0


def test_promtool_accepts_the_deployed_config_and_rules() -> None:
    config = promtool("check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(DEPLOY / "prometheus/alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


@pytest.fixture
def dispatcher_service(amqp_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    service = Process(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "--url",
            amqp_url,
            "serve",
            "--metrics-port",
            str(port),
        ]
    )
    service.wait_line("collecting acks")
    try:
        yield port
    finally:
        service.terminate()


def _traffic(url: str) -> None:
    """Done, failed, rejected and unroutable commands, spread over a few seconds."""
    deadline = time.monotonic() + TRAFFIC_SECONDS
    with Dispatcher(url) as dispatcher:
        while time.monotonic() < deadline:
            dispatcher.trigger(["MON-NT", "MON-95", "MON-FAIL", "MON-GHOST"], "CCIM32_STARTCYCLE")
            dispatcher.trigger(["MON-95"], "CLISVCL_CLOSE")  # wrong platform: rejected
            time.sleep(0.5)


def test_every_dashboard_and_alert_expression_against_real_prometheus(
    amqp_url: str, vhost: str, tmp_path: Path, dispatcher_service: int
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["MON-NT", "MON-95", "MON-FAIL"])
    agents = [
        start_agent(amqp_url, "MON-NT", tmp_path),
        start_agent(amqp_url, "MON-95", tmp_path, extra_toml='platform = "win9x"'),
        start_agent(amqp_url, "MON-FAIL", tmp_path, simulated={"failure_rate": 1.0}),
    ]
    prometheus = Prometheus(write_config(tmp_path, dispatcher_service, vhost), tmp_path)
    try:
        wait_for(prometheus.targets_up, 30, "every scrape target up")
        _traffic(amqp_url)
        time.sleep(3)  # a few more scrapes after the last ack
        dashboard = [(t, e, prometheus.query(e)) for t, e in dashboard_expressions()]
        alerts = [(t, e, prometheus.query(e)) for t, e in alert_expressions()]
    finally:
        prometheus.stop()
        for agent in agents:
            agent.terminate()

    empty = [(t, e) for t, e, r in dashboard if r.get("status") != "success" or not has_numbers(r)]
    invalid = [(t, e, r.get("error")) for t, e, r in alerts if r.get("status") != "success"]
    with_data = len(dashboard) - len(empty)
    print(
        f"\nmonitoring proof: {len(dashboard)} dashboard expressions, {with_data} returned data; "
        f"{len(alerts)} alert expressions, {len(alerts) - len(invalid)} valid and evaluated"
    )
    assert not empty, f"dashboard queries without data: {empty}"
    assert not invalid, f"alert expressions that failed: {invalid}"
