"""The agent's /metrics stay bounded whatever component and event names commands claim."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.metrics import AgentMetrics
from schemas import Ack, encode


@pytest.fixture
def metrics() -> Iterator[AgentMetrics]:
    served = AgentMetrics(0)
    try:
        yield served
    finally:
        served.close()


def ack(component: str, event: str, status: str = "rejected") -> bytes:
    return encode(
        Ack(
            command_id="c1",
            client_id="PC042",
            status=status,
            received_at=time.time(),
            agent_version="0.1.0",
            component=component,
            event=event,
            reason="unknown-component" if status == "rejected" else None,
            run_seconds=0.1 if status == "done" else None,
        )
    )


def series(metrics: AgentMetrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


def test_names_outside_the_catalog_are_counted_as_other(metrics: AgentMetrics) -> None:
    metrics.answered(ack("CQMGR32", "STARTCYCLE", "done"))
    metrics.answered(ack("ZZ0", "STARTCYCLE"))
    before = series(metrics)
    for n in range(500):  # what a stream of refused commands can claim
        metrics.answered(ack(f"ZZ{n}", f"EV{n}"))
        metrics.answered(ack("CCIM32", f"EV{n}"))
    assert series(metrics) == before
    sample = metrics.registry.get_sample_value
    labels = {"component": "other", "event": "other", "status": "rejected"}
    assert sample("setevnt_agent_answers_total", labels) == 1001
    done = {"component": "CQMGR32", "event": "STARTCYCLE", "status": "done"}
    assert sample("setevnt_agent_answers_total", done) == 1


def test_poisoned_deliveries_are_counted(metrics: AgentMetrics) -> None:
    metrics.poisoned()
    metrics.poisoned()
    assert metrics.registry.get_sample_value("setevnt_agent_poisoned_deliveries_total") == 2
