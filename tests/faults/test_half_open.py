"""Half-open connections: the proxy stops forwarding without closing anything.

Nothing tells either end that the link is dead. The agent must notice from the missing
broker heartbeats (pika checks every heartbeat + 5 s, so within two checks) and
reconnect; a publisher must not wait forever for confirms that cannot arrive.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.api.waiter import AckWaiter
from tests.faults.proxy import Proxy
from tests.integration.helpers import channel, drain, start_agent

pytestmark = [pytest.mark.broker, pytest.mark.slow]
HEARTBEAT = 2  # seconds; short so the test is quick
# pika's heartbeat check runs every HEARTBEAT + 5 s; a silent link fails the second one.
NOTICED_WITHIN = 2 * (HEARTBEAT + 5)


@pytest.fixture
def proxy(broker: None) -> Iterator[Proxy]:
    with Proxy() as running:
        yield running


def test_agent_notices_a_half_open_link_and_reconnects(
    amqp_url: str, vhost: str, proxy: Proxy, tmp_path: Path
) -> None:
    via_proxy = proxy.url(urllib.parse.quote(vhost, safe=""))
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(
        via_proxy, "PC001", tmp_path, extra_toml=f"[broker]\nheartbeat = {HEARTBEAT}"
    )
    try:
        before = len(agent.lines)
        frozen_at = time.monotonic()
        assert proxy.freeze() >= 2  # consuming and publishing connections
        agent.wait_line("half-open", timeout=NOTICED_WITHIN + 10, after=before)
        noticed = time.monotonic() - frozen_at
        agent.wait_line("consuming setevnt.client.PC001", timeout=30, after=before)
        print(f"\nhalf-open link noticed after {noticed:.1f} s (heartbeat {HEARTBEAT} s)")
        assert noticed <= NOTICED_WITHIN + 3
        with Dispatcher(amqp_url) as dispatcher, AckWaiter(dispatcher.settings, ["PC001"]) as w:
            receipt = dispatcher.trigger(["PC001"], "CQMGR32_STARTCYCLE")[0]
            answers = w.wait({receipt.command_id: receipt.client_id}, 20)
        assert answers[receipt.command_id].ack.status == "done"
    finally:
        agent.terminate()


def test_publisher_does_not_block_forever_on_a_half_open_link(
    amqp_url: str, vhost: str, proxy: Proxy
) -> None:
    settings = _queue_behind(proxy, amqp_url, vhost)
    messages = [Outgoing(f"m{i}", "", "q", b"x", "command") for i in range(20)]
    with ConfirmingPublisher(settings, confirm_timeout=3.0) as publisher:
        publisher.publish(messages[:10])
        proxy.freeze()
        started = time.monotonic()
        outcomes = publisher.publish(messages[10:])
        took = time.monotonic() - started
    print(f"\npublish over a frozen link recovered after {took:.1f} s")
    assert set(outcomes.values()) == {Outcome.SENT}
    assert took < 3.0 + NOTICED_WITHIN + 10  # the confirm timeout, the close, a reconnect
    assert proxy.connections_made >= 2  # it reconnected


def test_a_frozen_link_loses_nothing_that_any_channel_had_in_flight(
    amqp_url: str, vhost: str, proxy: Proxy
) -> None:
    """Four channels, two unconfirmed messages each, when the link goes half-open: all
    eight go out again on the next connection, and each reaches the queue once."""
    settings = _queue_behind(proxy, amqp_url, vhost)
    messages = [Outgoing(f"m{i}", "", "q", b"x", "command") for i in range(48)]
    with ConfirmingPublisher(settings, window=8, channels=4, confirm_timeout=3.0) as publisher:
        publisher.publish(messages[:8])  # every channel open and confirming
        proxy.freeze()
        outcomes = publisher.publish(messages[8:])
    assert outcomes == {m.key: Outcome.SENT for m in messages[8:]}
    assert proxy.connections_made >= 2  # it reconnected
    in_queue = [properties.message_id for properties, _body in drain(amqp_url, "q")]
    assert sorted(in_queue) == sorted(m.key for m in messages)


def _queue_behind(proxy: Proxy, amqp_url: str, vhost: str) -> BrokerSettings:
    """Declare queue ``q``; settings for a publisher that reaches it through the proxy."""
    connection, ch = channel(amqp_url)
    ch.queue_declare("q", durable=True)
    connection.close()
    return BrokerSettings(url=proxy.url(urllib.parse.quote(vhost, safe="")), heartbeat=HEARTBEAT)
