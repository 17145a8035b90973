"""A broker that takes a publish and never confirms it, while its heartbeats keep the link
alive: the proxy drops its publisher confirms and forwards everything else.

pika's blocking publish waits for that confirm with no limit. The watchdog bounds the
wait: the agent, or the service whose request intake waits, logs where every thread
waits and exits for its service manager to start it again; the agent started again
answers the command from its journal, without running it twice. An agent whose loop
keeps turning is left alone.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.watchdog import STALLED_EXIT
from dispatcher import Dispatcher
from dispatcher.api.client import Client
from dispatcher.api.waiter import AckWaiter
from schemas.refusals import RequestRefused
from tests.faults.proxy import Proxy
from tests.integration.helpers import Process, records, start_agent, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
STALL = 5  # seconds: the test agents' stall_timeout
CLIENT = "PC001"


@pytest.fixture
def proxy(broker: None) -> Iterator[Proxy]:
    with Proxy(framed=True) as running:
        yield running


def test_an_agent_whose_ack_is_never_confirmed_exits_for_a_restart(
    amqp_url: str, vhost: str, proxy: Proxy, tmp_path: Path
) -> None:
    via_proxy = proxy.url(urllib.parse.quote(vhost, safe=""))
    watched = f'stall_timeout = "{STALL}s"'
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([CLIENT])
    agent = start_agent(via_proxy, CLIENT, tmp_path, agent_toml=watched)
    try:
        assert proxy.withhold_confirms() >= 2  # its consuming and publishing connections
        with Dispatcher(amqp_url) as dispatcher:
            command_id = dispatcher.trigger([CLIENT], "CCIM32_STARTCYCLE")[0].command_id
        status = agent.proc.wait(timeout=STALL + 60)
    finally:
        agent.kill()
    assert status == STALLED_EXIT, agent.output[-3000:]
    assert "the broker loop has not come back" in agent.output
    assert "basic_publish" in agent.output  # the stack shows where it waited
    assert _finishes(tmp_path, command_id) == 1  # it ran before its ack hung

    # Started again (its service manager's job), on links that confirm.
    again = start_agent(via_proxy, CLIENT, tmp_path, agent_toml=watched)
    try:
        with Dispatcher(amqp_url) as dispatcher, AckWaiter(dispatcher.settings, [CLIENT]) as w:
            # The new delivery of the unsettled command is answered from the journal;
            # a second command shows the agent consuming and acking on.
            second = dispatcher.trigger([CLIENT], "CCIM32_STARTCYCLE")[0].command_id
            answers = w.wait({second: CLIENT}, 30)
        assert answers[second].ack.status == "done"
        wait_for(lambda: "already done: re-sending its ack" in again.output, 30, "the re-sent ack")
        # Idle with its loop turning, it is left alone well past the stall timeout.
        time.sleep(2 * STALL)
        assert again.proc.poll() is None, again.output[-3000:]
    finally:
        again.terminate()
    assert _finishes(tmp_path, command_id) == 1  # never run twice


def test_a_service_whose_reply_is_never_confirmed_exits_for_a_restart(
    amqp_url: str, vhost: str, proxy: Proxy, tmp_path: Path
) -> None:
    """Without a policy the intake refuses every request, with a reply: the reply reaches
    the client, its confirm never reaches the intake."""
    env = {
        "SETEVNT_AMQP_URL": proxy.url(urllib.parse.quote(vhost, safe="")),
        "SETEVNT_DB": str(tmp_path / "setevnt.db"),
    }
    argv = [sys.executable, "-m", "dispatcher", "serve", "--metrics-port", "0"]
    serve = Process([*argv, "--stall-timeout", f"{STALL}s"], env=env)
    try:
        serve.wait_line("taking requests from setevnt.requests", timeout=30)
        assert proxy.withhold_confirms() >= 2
        with Client(amqp_url, accept_timeout=30) as client, pytest.raises(RequestRefused):
            client.trigger("CCIM32_STARTCYCLE", clients=[CLIENT])
        status = serve.proc.wait(timeout=STALL + 60)
    finally:
        serve.kill()
    assert status == STALLED_EXIT, serve.output[-3000:]
    assert "the intake loop has not come back" in serve.output
    assert "basic_publish" in serve.output


def _finishes(tmp: Path, command_id: str) -> int:
    return sum(
        r["phase"] == "finish" and r["command_id"] == command_id
        for r in records(tmp / f"{CLIENT}.record")
    )
