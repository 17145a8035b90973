"""The Windows service's start and stop, driven on Linux through the same runner the
pywin32 service calls, around a real agent consuming from the real broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.assembly import build_agent
from agent.config import load
from agent.daemon import Agent
from agent.windows.runner import EXIT_OK, ServiceRunner
from dispatcher import Dispatcher
from schemas.signing import Signer

pytestmark = pytest.mark.broker

CLIENT = "PC-SVC"


def test_service_start_runs_the_agent_and_stop_ends_it_gracefully(
    amqp_url: str, tmp_path: Path
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([CLIENT])
    environ = {"SETEVNT_DISPATCHER_PUBLIC_KEY": Signer.generate().public_text()}
    overrides = {
        "client_id": CLIENT,
        "url": amqp_url,
        "backend": "simulated",
        "journal": str(tmp_path / "journal"),
    }
    agents: list[Agent] = []

    def build() -> Agent:
        agent = build_agent(load(None, environ=environ, overrides=overrides))
        agents.append(agent)
        return agent

    runner = ServiceRunner(build)
    status: list[int] = []
    service = threading.Thread(target=lambda: status.append(runner.run()))
    service.start()
    try:
        assert _ready(agents), "the agent did not start consuming"
    finally:
        runner.stop()  # what SvcStop does
        service.join(30)
    assert not service.is_alive() and status == [EXIT_OK]
    assert (tmp_path / "journal.spool").is_dir()  # the agent's own state, created private
    assert (tmp_path / "journal.spool").stat().st_mode & 0o777 == 0o700


def _ready(agents: list[Agent], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agents and agents[0].ready.is_set():
            return True
        time.sleep(0.05)
    return False
