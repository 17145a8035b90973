"""The ack collector and its metrics, with a fresh registry per test."""

from __future__ import annotations

import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dispatcher import Dispatcher
from tests.conftest import management
from tests.integration.collecting import collecting
from tests.integration.helpers import agent_connections, start_agent, stop_all, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def collector(amqp_url: str, tmp_path: Path) -> Iterator[CollectorRegistry]:
    with collecting(amqp_url, tmp_path) as running:
        yield running.registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_collector_counts_outcomes_latency_and_publishes(
    amqp_url: str, tmp_path: Path, collector: CollectorRegistry
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001", "PC002"])
    agents = [start_agent(amqp_url, c, tmp_path) for c in ("PC001", "PC002")]
    try:
        with Dispatcher(amqp_url) as dispatcher:
            dispatcher.trigger(["PC001", "PC002", "GHOST"], "CCIM32_STARTCYCLE")
        labels = {"component": "CCIM32", "event": "STARTCYCLE"}
        wait_for(
            lambda: (
                sample(collector, "setevnt_command_outcomes_total", **labels, status="done") == 2
            ),
            20,
            "two done outcomes",
        )
        latency = sample(
            collector, "setevnt_trigger_latency_seconds_count", **labels, status="done"
        )
        assert latency == 2
        assert (
            0
            < sample(collector, "setevnt_trigger_latency_seconds_sum", **labels, status="done")
            < 20
        )
        assert sample(collector, "setevnt_component_run_seconds_count", **labels) == 2
        wait_for(
            lambda: (
                sample(collector, "setevnt_commands_published_total", **labels, result="sent") == 2
            ),
            10,
            "publish report",
        )
        assert (
            sample(collector, "setevnt_commands_published_total", **labels, result="unroutable")
            == 1
        )
    finally:
        stop_all(agents)


def test_commands_sent_outside_storms_reach_the_ledger_through_the_collector(
    amqp_url: str, tmp_path: Path
) -> None:
    """`setevnt` from a host without the dispatcher's database: the collector learns of the
    commands before their acks (so the acks find rows) and of the broker's outcome."""
    from dispatcher.store.ledger import Ledger

    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        with collecting(amqp_url, tmp_path) as running:
            with Dispatcher(amqp_url) as dispatcher:
                done, ghost = dispatcher.trigger(["PC001", "GHOST"], "CCIM32_STARTCYCLE")
            with Ledger(running.database) as ledger:

                def statuses() -> tuple[str | None, ...]:
                    found = [ledger.command(r.command_id) for r in (done, ghost)]
                    return tuple(c.status if c else None for c in found)

                def sent() -> bool:
                    row = ledger.command(done.command_id)
                    return row is not None and row.sent_at is not None

                # The ack and the broker's outcome reach the collector in either order.
                wait_for(lambda: statuses() == ("done", "unroutable"), 20, "both rows settled")
                wait_for(sent, 20, "the sent time, even after the ack")
                row = ledger.command(done.command_id)
                assert row is not None and (row.component, row.client_id) == ("CCIM32", "PC001")
                assert row.latency is not None and row.sent_at is not None
    finally:
        agent.terminate()


def test_metric_labels_are_bounded(collector: CollectorRegistry) -> None:
    allowed = {"component", "event", "status", "reason", "result", "role", "outcome"}
    for metric in collector.collect():
        for sample_ in metric.samples:
            assert set(sample_.labels) - {"le"} <= allowed, (metric.name, sample_.labels)


def test_agent_reconnects_after_its_connection_is_closed(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        # The management API list lags a few seconds behind new connections.
        names = wait_for(lambda: agent_connections(vhost, "PC001"), 20, "agent connections")
        before = len(agent.lines)
        closed = 0
        for name in names:
            try:
                management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")
                closed += 1
            except urllib.error.HTTPError as exc:
                # The listing lags: a connection already gone answers 404, or 500 when it
                # went away while the broker was closing it.
                if exc.code not in (404, 500):
                    raise
        assert closed >= 1
        agent.wait_line("connection lost", timeout=15, after=before)
        agent.wait_line("consuming setevnt.client.PC001", timeout=30, after=before)
        with Dispatcher(amqp_url) as dispatcher:
            from dispatcher.api.waiter import AckWaiter

            with AckWaiter(dispatcher.settings, ["PC001"]) as waiter:
                receipt = dispatcher.trigger(["PC001"], "CQMGR32_STARTCYCLE")[0]
                answers = waiter.wait({receipt.command_id: receipt.client_id}, 20)
        assert answers[receipt.command_id].ack.status == "done"
    finally:
        agent.terminate()
