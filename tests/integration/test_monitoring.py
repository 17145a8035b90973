"""Every dashboard query and alert rule, proven against a real Prometheus.

Debian's prometheus scrapes a live `setevnt-dispatcher serve` and the broker's own
rabbitmq_prometheus endpoint while real agents answer real commands; then each PromQL
expression from deploy/ is evaluated through Prometheus' HTTP API. The dashboard is read
as a Grafana would import it whose Prometheus has another name than the one deploy/
provisions: every panel, annotation and variable must still find its datasource.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dispatcher import Client, Dispatcher, RequestRefused
from dispatcher.api.waiter import AckWaiter
from tests.integration.fleet import Fleet
from tests.integration.helpers import Process, records, start_agent, start_hold, stop_all, wait_for
from tests.integration.monitoring import (
    DEPLOY,
    Imported,
    Prometheus,
    alert_expressions,
    amtool,
    dashboard,
    has_numbers,
    label_values,
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
    routing = amtool("check-config", str(DEPLOY / "alertmanager/alertmanager.yml"))
    assert routing.returncode == 0, routing.stdout + routing.stderr


def _metrics_port(service: Process) -> int:
    line = next(x for x in service.lines if "metrics on http://" in x)
    return int(line.rsplit(":", 1)[1].split("/")[0])


def _traffic(url: str) -> None:
    """Done, failed, rejected and unroutable commands, spread over a few seconds, and a
    service's request that the policy refuses (the service runs with none: deny all)."""
    with Client(url, accept_timeout=15) as client, pytest.raises(RequestRefused):
        client.trigger("CCIM32_STARTCYCLE", clients=["MON-GUARD"])
    deadline = time.monotonic() + TRAFFIC_SECONDS
    with Dispatcher(url) as dispatcher:
        while time.monotonic() < deadline:
            dispatcher.trigger(["MON-GUARD", "MON-95", "MON-GHOST"], "CQMGR32_STARTCYCLE")
            dispatcher.trigger(["MON-95"], "CLISVCL_CLOSE")  # wrong platform: rejected
            time.sleep(0.5)


def test_every_dashboard_and_alert_expression_against_real_prometheus(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    """A storm over a simulated fleet (some clients failing), a real agent whose
    distribution is running (its command is deferred, then released), a win9x agent
    refusing an NT-only event, an unknown client: every panel has something to show."""
    imported = Imported(dashboard(), {"prometheus-of-another-site": "prometheus"})
    fleet = Fleet(amqp_url, tmp_path)
    agents: list[Process] = []
    prometheus: Prometheus | None = None
    try:
        port = _metrics_port(fleet.serve())
        fleet.simulate(30, "--failure-rate", "0.2", "--seed", "7", prefix="MON-SIM")
        with Dispatcher(amqp_url) as dispatcher:
            dispatcher.provision(["MON-GUARD", "MON-95"])
        agents.append(start_agent(amqp_url, "MON-GUARD", tmp_path))
        agents.append(start_agent(amqp_url, "MON-95", tmp_path, extra_toml='platform = "win9x"'))
        prometheus = Prometheus(write_config(tmp_path, port, vhost), tmp_path)
        wait_for(prometheus.targets_up, 30, "every scrape target up")
        wait_for(lambda: len(fleet.clients()) >= 32, 30, "the fleet registered")
        hold = start_hold(tmp_path / "distribution.lock", "sleep", "3")
        agents.append(hold)
        code, outcome = fleet.storm("CCIM32_STARTCYCLE", "--all", "--max-errors", "100%")
        assert code in (0, 1), outcome  # failures are expected: a fifth of the fleet fails
        # A second distribution on the same client, once the first one ended and its
        # deferred command ran: the deferral histogram then has a series that grows
        # inside the rate window, not one that just appeared.
        hold.proc.wait(timeout=15)
        record = tmp_path / "MON-GUARD.record"
        wait_for(lambda: any(r["phase"] == "finish" for r in records(record)), 20, "release")
        agents.append(start_hold(tmp_path / "distribution.lock", "sleep", "2"))
        with Dispatcher(amqp_url) as dispatcher, AckWaiter(dispatcher.settings, ["MON-GUARD"]) as w:
            receipt = dispatcher.trigger(["MON-GUARD"], "CCIM32_STARTCYCLE")[0]
            assert (
                w.wait({receipt.command_id: receipt.client_id}, 20)[receipt.command_id].ack.status
                == "done"
            )
        _traffic(amqp_url)
        time.sleep(3)  # a few more scrapes after the last ack
        panels = [(t, e, prometheus.query(e)) for t, e in imported.panels]
        marks = [(t, e, prometheus.query(e)) for t, e in imported.annotations]
        choices = {name: label_values(prometheus, q) for name, q in imported.variable_queries}
        alerts = [(t, e, prometheus.query(e)) for t, e in alert_expressions()]
        refused = prometheus.query('sum(setevnt_requests_total{outcome="refused"})')
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_all(agents)
        fleet.stop()

    empty = [(t, e) for t, e, r in panels if r.get("status") != "success" or not has_numbers(r)]
    invalid = [(t, e, r.get("error")) for t, e, r in alerts if r.get("status") != "success"]
    bad_marks = [(t, e, r.get("error")) for t, e, r in marks if r.get("status") != "success"]
    with_data = len(panels) - len(empty)
    print(
        f"\nmonitoring proof: {len(panels)} dashboard expressions, {with_data} returned data; "
        f"{len(marks)} annotations; {len(alerts)} alert expressions, "
        f"{len(alerts) - len(invalid)} valid and evaluated"
    )
    assert not empty, f"dashboard queries without data: {empty}"
    assert not bad_marks, f"annotation queries that failed: {bad_marks}"
    assert not invalid, f"alert expressions that failed: {invalid}"
    assert {"CCIM32", "CQMGR32", "other"} <= set(choices["component"]), choices
    assert {"STARTCYCLE", "CLOSE"} <= set(choices["event"]), choices
    refusals = [float(series["value"][1]) for series in refused["data"]["result"]]
    assert refusals and refusals[0] >= 1, f"the refused request is not counted: {refused}"
