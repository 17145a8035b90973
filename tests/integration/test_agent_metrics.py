"""The agent's own /metrics: off unless configured, counting what it answered when on."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dispatcher import Dispatcher
from dispatcher.api.waiter import AckWaiter
from tests.integration.helpers import ROOT, start_agent, wait_for

pytestmark = pytest.mark.broker


def test_agent_metrics_when_turned_on(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path, extra_toml="[metrics]\nport = 0")
    try:
        line = wait_for(
            lambda: next((x for x in agent.lines if "agent metrics on http://" in x), None),
            10,
            "the metrics address",
        )
        url = line.split("agent metrics on ", 1)[1].strip()
        with Dispatcher(amqp_url) as dispatcher, AckWaiter(dispatcher.settings, ["PC001"]) as w:
            receipt = dispatcher.trigger(["PC001"], "CQMGR32_STARTCYCLE")[0]
            assert (
                w.wait({receipt.command_id: receipt.client_id}, 20)[receipt.command_id].ack.status
                == "done"
            )
        wanted = (
            'setevnt_agent_answers_total{component="CQMGR32",event="STARTCYCLE",status="done"} 1.0'
        )

        def scraped() -> bool:
            with urllib.request.urlopen(url, timeout=5) as page:
                return wanted in page.read().decode()

        wait_for(scraped, 10, "the answer counted on the agent's /metrics")
    finally:
        agent.terminate()


def test_agent_metrics_are_off_by_default_and_cost_no_import() -> None:
    probe = (
        "import sys; from agent.config import AgentConfig; from agent.daemon import Agent; "
        "print(AgentConfig(client_id='PC001').metrics_port, 'prometheus_client' in sys.modules)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert shown.stdout.split() == ["None", "False"], shown.stderr
