"""Nothing sent stops or wedges an agent, and a consumer the broker takes away comes back.

Against the real broker: a consuming session whose callback raises, whose channel the
broker closes or whose consumer it cancels; real agent processes whose queue is deleted
under them, whose backend raises, and which are sent commands that start later or far
too late; an in-process agent whose handling of a delivery raises; a fleet simulator
given a command with a later start.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from agent.backends.simulated import SimulatedBackend
from agent.config import AgentConfig, SecurityConfig
from agent.daemon import Agent
from agent.handler import Delivery, Handler, Run, Settle
from agent.journal import Journal
from broker import topology
from broker.errors import ConnectionLost
from broker.session import Incoming, Session
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.access import keys
from schemas import Ack, Command, encode
from tests.conftest import management
from tests.integration.fleet import Fleet
from tests.integration.helpers import (
    Process,
    channel,
    collect_acks,
    final,
    queue_depth,
    records,
    security_toml,
    signed,
    start_agent,
    wait_for,
)

pytestmark = pytest.mark.broker

CLIENT = "PC001"
QUEUE = topology.client_queue(CLIENT)


def provision(url: str) -> None:
    with Dispatcher(url) as dispatcher:
        dispatcher.provision([CLIENT])


def publish(url: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    connection, ch = channel(url)
    try:
        properties = pika.BasicProperties(headers=headers, delivery_mode=2, message_id="m-1")
        ch.basic_publish("", QUEUE, body, properties)
    finally:
        connection.close()


def unacked(vhost: str, queue: str = QUEUE) -> int:
    quoted = urllib.parse.quote(vhost, safe="")
    info = management("GET", f"/queues/{quoted}/{urllib.parse.quote(queue, safe='')}")
    return int(info.get("messages_unacknowledged", 0))


@pytest.fixture
def session(amqp_url: str) -> Iterator[Session]:
    provision(amqp_url)
    opened = Session(BrokerSettings.from_env(amqp_url), prefetch=1)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


def pump_until_lost(session: Session, timeout: float = 20) -> ConnectionLost:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            session.pump(0.2)
        except ConnectionLost as lost:
            return lost
    raise AssertionError(f"pump went on idling for {timeout} s")


# -- the consuming session ------------------------------------------------------------------


def test_a_raising_callback_dead_letters_its_delivery_and_consuming_goes_on(
    amqp_url: str, session: Session
) -> None:
    seen: list[bytes] = []

    def on_message(incoming: Incoming) -> None:
        if incoming.body == b"boom":
            raise KeyError("a bug in the consumer")
        seen.append(incoming.body)
        session.settle(incoming.delivery_tag)

    session.consume(QUEUE, on_message)
    publish(amqp_url, b"boom")
    publish(amqp_url, b"fine")
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        session.pump(0.2)
    assert seen == [b"fine"]
    assert session.poisoned == 1
    assert queue_depth(amqp_url, topology.DEAD_QUEUE) == 1
    assert queue_depth(amqp_url, QUEUE) == 0


def test_a_channel_the_broker_closes_makes_pump_raise(amqp_url: str, session: Session) -> None:
    session.consume(QUEUE, lambda incoming: None)
    session.pump(0.1)
    session.settle(4242)  # an unknown delivery tag: the broker closes the channel (406)
    lost = pump_until_lost(session)
    assert "closed the consuming channel" in str(lost)


def test_a_consumer_the_broker_cancels_makes_pump_raise(amqp_url: str, session: Session) -> None:
    session.consume(QUEUE, lambda incoming: None)
    session.pump(0.1)
    connection, ch = channel(amqp_url)
    try:
        ch.queue_delete(QUEUE)
    finally:
        connection.close()
    lost = pump_until_lost(session)
    assert f"cancelled the consumer of {QUEUE}" in str(lost)


# -- agents --------------------------------------------------------------------------------


def test_an_agent_whose_queue_is_deleted_consumes_it_again_once_it_is_back(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    provision(amqp_url)
    agent = start_agent(amqp_url, CLIENT, tmp_path)
    try:
        connection, ch = channel(amqp_url)
        try:
            ch.queue_delete(QUEUE)
        finally:
            connection.close()
        agent.wait_line("cancelled the consumer", timeout=20)
        provision(amqp_url)  # the dispatcher declares it again (on the agent's hello)
        with Dispatcher(amqp_url) as dispatcher:
            receipt = dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")[0]
        acks = collect_acks(amqp_url, lambda a: bool(final(a, receipt.command_id)), 60)
        assert final(acks, receipt.command_id)[0].status == "done"
        assert agent.proc.poll() is None
    finally:
        agent.terminate()


def exec_agent(url: str, tmp: Path, commands: dict[str, list[str]]) -> Process:
    """``setevnt-agent run`` with the exec backend, waiting until it consumes."""
    table = "".join(f"{event} = {json.dumps(argv)}\n" for event, argv in commands.items())
    config = tmp / "exec.toml"
    config.write_text(
        f'client_id = "{CLIENT}"\n{security_toml()}\n'
        f'[agent]\njournal = "{tmp / "journal"}"\n'
        f'[guard]\nprobes = []\n[backend]\ntype = "exec"\n[backend.exec.commands]\n{table}'
    )
    agent = Process(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env={"SETEVNT_AMQP_URL": url},
    )
    agent.wait_line(f"agent {CLIENT} consuming")
    return agent


def test_a_backend_that_raises_is_answered_failed_and_the_agent_keeps_serving(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    """A NUL in a configured argv makes subprocess raise ValueError, not an OSError."""
    provision(amqp_url)
    agent = exec_agent(
        amqp_url,
        tmp_path,
        {"CQMGR32_STARTCYCLE": ["/bin/true\x00"], "SMSAPM32_STARTCYCLE": ["/bin/true"]},
    )
    try:
        with Dispatcher(amqp_url) as dispatcher:
            broken = dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")[0]
            fine = dispatcher.trigger([CLIENT], "SMSAPM32_STARTCYCLE")[0]
        ids = {broken.command_id, fine.command_id}
        acks = collect_acks(amqp_url, lambda a: all(final(a, c) for c in ids), 30)
        (failed,) = final(acks, broken.command_id)
        assert (failed.status, failed.reason) == ("failed", "signal-failed")
        assert failed.detail is not None and "ValueError" in failed.detail
        assert final(acks, fine.command_id)[0].status == "done"
        wait_for(lambda: unacked(vhost) == 0, 30, "every delivery settled")
        assert queue_depth(amqp_url, QUEUE) == 0
    finally:
        agent.terminate()


def test_an_agent_takes_a_command_with_a_later_start_without_holding_it(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    provision(amqp_url)
    agent = start_agent(amqp_url, CLIENT, tmp_path)
    try:
        start = time.time() + 6
        with Dispatcher(amqp_url) as dispatcher:
            later = dispatcher.trigger([CLIENT], "CCIM32_STARTCYCLE", not_before=start)[0]
            wait_for(lambda: queue_depth(amqp_url, QUEUE) == 0, 10, "the first taken")
            # Held, the first would keep the second (prefetch 1) until its start.
            now = dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")[0]
        ids = {later.command_id, now.command_id}
        acks = collect_acks(amqp_url, lambda a: all(final(a, c) for c in ids), 30)
        order = [a.command_id for a in acks if a.final]
        assert order.index(now.command_id) < order.index(later.command_id)
        assert not [a for a in acks if a.command_id == later.command_id and not a.final]
        (done,) = final(acks, later.command_id)
        assert done.status == "done"
        assert done.started_at is not None and done.started_at >= start
        runs = [r["command_id"] for r in records(tmp_path / f"{CLIENT}.record")]
        assert runs.count(later.command_id) == 2  # started and finished, once
        wait_for(lambda: unacked(vhost) == 0, 30, "no delivery left unacked")
    finally:
        agent.terminate()


def test_a_command_starting_beyond_the_agent_lifetime_is_refused_at_once(
    amqp_url: str, tmp_path: Path
) -> None:
    provision(amqp_url)
    agent = start_agent(amqp_url, CLIENT, tmp_path)
    try:
        now = time.time()
        hostile = Command(
            "far-future", CLIENT, "CCIM32", "STARTCYCLE", True, now, now + 3 * 86400, "x",
            not_before=now + 2 * 86400,
        )  # fmt: skip
        body = encode(hostile)
        publish(amqp_url, body, signed(body))
        with Dispatcher(amqp_url) as dispatcher:
            good = dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")[0]
        ids = {"far-future", good.command_id}
        acks = collect_acks(amqp_url, lambda a: all(final(a, c) for c in ids), 30)
        (refused,) = final(acks, "far-future")
        assert (refused.status, refused.reason) == ("rejected", "not-permitted")
        assert refused.detail is not None and "max_command_lifetime" in refused.detail
        assert final(acks, good.command_id)[0].status == "done"
    finally:
        agent.terminate()


class Fragile(Handler):
    """A handler with a bug that some body triggers."""

    def admit(self, delivery: Delivery) -> Settle | Run:
        if delivery.body == b"trips the bug":
            raise RuntimeError("a bug in admit")
        return super().admit(delivery)


def test_whatever_escapes_handling_a_delivery_is_dead_lettered_and_counted(
    amqp_url: str, tmp_path: Path
) -> None:
    provision(amqp_url)
    signer = keys.load()
    assert signer is not None
    config = AgentConfig(
        client_id=CLIENT,
        broker=BrokerSettings.from_env(amqp_url).named(f"setevnt-agent {CLIENT}"),
        security=SecurityConfig(public_keys=(signer.public_text(),)),
        metrics_port=0,
    )
    record = tmp_path / "record"
    backend = SimulatedBackend(duration=0, record=str(record))
    agent = Agent(config, Fragile(config, backend, Journal(tmp_path / "journal")))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert agent.ready.wait(20)
        publish(amqp_url, b"trips the bug")
        with Dispatcher(amqp_url) as dispatcher:
            good = dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")[0]
        acks = collect_acks(amqp_url, lambda a: bool(final(a, good.command_id)), 30)
        assert final(acks, good.command_id)[0].status == "done"
        assert queue_depth(amqp_url, topology.DEAD_QUEUE) == 1
        assert agent._metrics is not None
        poisoned = agent._metrics.registry.get_sample_value(
            "setevnt_agent_poisoned_deliveries_total"
        )
        assert poisoned == 1.0
    finally:
        agent.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_simulator_takes_a_command_with_a_later_start_without_holding_it(
    fleet: Fleet, amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    record = tmp_path / "sim.record"
    fleet.simulate(1, "--provision", "--record", str(record), prefix="SIM")
    client = "SIM00000"
    start = time.time() + 6
    queue = topology.client_queue(client)
    with Dispatcher(amqp_url) as dispatcher:
        later = dispatcher.trigger([client], "CCIM32_STARTCYCLE", not_before=start)[0]
        wait_for(lambda: queue_depth(amqp_url, queue) == 0, 10, "the first taken")
        # Held, the first would keep the second (prefetch 1) until its start.
        now = dispatcher.trigger([client], "CQMGR32_STARTCYCLE")[0]
    ids = {later.command_id, now.command_id}
    acks: list[Ack] = collect_acks(amqp_url, lambda a: all(final(a, c) for c in ids), 30)
    order = [a.command_id for a in acks if a.final]
    assert order.index(now.command_id) < order.index(later.command_id)
    (done,) = final(acks, later.command_id)
    assert done.status == "done"
    assert done.started_at is not None and done.started_at >= start
    wait_for(lambda: unacked(vhost, queue) == 0, 30, "no delivery left unacked")
