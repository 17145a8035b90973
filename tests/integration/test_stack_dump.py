"""kill -USR1 on the agent or the service prints every thread's stack, and nothing stops:
what an operator (or a test whose process will not stop) reads to see where it waits."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dispatcher import Dispatcher
from tests.integration.fleet import Fleet
from tests.integration.helpers import Process, start_agent, wait_for

pytestmark = pytest.mark.broker


def dumped(process: Process, thread: str) -> None:
    """Signal ``process``; its dump names ``thread`` (a function on that thread's stack)."""
    seen = len(process.lines)
    process.proc.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: any(thread in line for line in process.lines[seen:]),
        15,
        f"a stack dump naming {thread}",
    )
    dump = process.lines[seen:]
    assert any("most recent call first" in line for line in dump), dump
    assert process.proc.poll() is None, "the dump stopped the process"


def test_the_agent_prints_its_stacks_and_keeps_consuming(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        dumped(agent, "_loop")  # the I/O thread, pumping its session
        with Dispatcher(amqp_url) as dispatcher:
            command = dispatcher.trigger(["PC001"], "CCIM32_STARTCYCLE")[0]
        record = tmp_path / "PC001.record"
        wait_for(lambda: command.command_id in record.read_text(), 15, "the command's run")
    finally:
        assert agent.terminate() == 0


def test_the_service_prints_its_stacks_and_keeps_running(fleet: Fleet) -> None:
    service = fleet.serve()
    try:
        dumped(service, "collector.py")  # the collector's thread
    finally:
        assert service.terminate() == 0
