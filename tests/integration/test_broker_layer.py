"""broker.broker.Broker against the real broker: it owns every connection it hands out."""

from __future__ import annotations

import gc
import urllib.parse

import pytest

from broker import topology
from broker.broker import Broker
from broker.publisher import Outcome, Outgoing
from broker.settings import BrokerSettings
from tests.conftest import management
from tests.integration.helpers import wait_for
from tests.integration.monitoring import free_port

pytestmark = pytest.mark.broker


def _connections(vhost: str, prefix: str) -> list[str]:
    quoted = urllib.parse.quote(vhost, safe="")
    return sorted(
        (conn.get("client_properties") or {}).get("connection_name", "")
        for conn in management("GET", f"/vhosts/{quoted}/connections") or []
        if (conn.get("client_properties") or {}).get("connection_name", "").startswith(prefix)
    )


def test_close_closes_every_connection_it_handed_out(amqp_url: str, vhost: str) -> None:
    broker = Broker(BrokerSettings.from_env(amqp_url), name="layer-test")
    broker.declare_topology()
    session = broker.session()
    session.open()
    consumer = broker.consumer(prefetch=5)
    consumer.open()
    requester = broker.requester(lambda reply: None)
    requester.open()
    probe = broker.probe()
    assert probe.state(topology.ACK_QUEUE).state is not None
    publisher = broker.publisher(window=10)
    sent = publisher.publish([Outgoing("k", "", "nowhere", b"x", "test")])
    assert sent == {"k": Outcome.UNROUTABLE}
    other = broker.named("layer-test other")
    other_consumer = other.consumer()
    other_consumer.open()
    assert len(broker.pieces()) == 6
    opened = wait_for(
        lambda: (names := _connections(vhost, "layer-test")) and len(names) >= 5 and names,
        30,
        "the broker's connections to show up",
    )
    assert "layer-test other" in opened
    assert "layer-test (publish)" in opened
    assert "layer-test (probe)" in opened

    broker.close()
    wait_for(lambda: _connections(vhost, "layer-test") == [], 30, "every connection to close")
    assert broker.pieces() == []
    assert other.closed
    broker.close()  # twice is fine
    with pytest.raises(RuntimeError):
        broker.consumer()


def test_a_piece_its_user_drops_is_forgotten(amqp_url: str) -> None:
    with Broker(BrokerSettings.from_env(amqp_url), name="layer-drop") as broker:
        kept = broker.consumer()
        dropped = broker.consumer()
        dropped.open()
        dropped.close()
        del dropped
        gc.collect()
        assert broker.pieces() == [kept]
        forgotten = broker.session()
        broker.forget(forgotten)
        assert broker.pieces() == [kept]
        assert broker.consumers(topology.ACK_QUEUE) == 0
    assert broker.pieces() == []


def test_provisioning_declares_through_the_next_node_when_one_is_down(
    amqp_url: str, vhost: str
) -> None:
    down = amqp_url.replace(":5672/", f":{free_port()}/")
    assert down != amqp_url
    # Each provisioning starts at the next node in turn: twice covers both orders.
    broker = Broker(BrokerSettings.from_env(f"{down},{amqp_url}"), name="layer-test")
    try:
        broker.provision_clients(["FAILOVER1"])
        broker.provision_clients(["FAILOVER2"])
    finally:
        broker.close()
    quoted = urllib.parse.quote(vhost, safe="")
    for client in ("FAILOVER1", "FAILOVER2"):
        found = management("GET", f"/queues/{quoted}/{topology.client_queue(client)}")
        assert found["name"] == topology.client_queue(client)


class _Finished:
    """A stream source with nothing to hand out."""

    def take(self, room: int) -> list[Outgoing]:
        return []

    def tick(self) -> None:
        pass

    def finished(self) -> bool:
        return True


def test_a_publisher_with_nothing_to_publish_still_closes_its_connection(
    amqp_url: str, vhost: str
) -> None:
    """A run complete before its loop started used to leave pika's loop told to stop, so
    the close handshake was never sent and the connection stayed open."""
    with Broker(BrokerSettings.from_env(amqp_url), name="layer-empty") as broker:
        empty = broker.named("layer-empty batch").publisher()
        assert empty.publish([]) == {}
        finished = broker.named("layer-empty stream").publisher()
        assert finished.stream(_Finished()) == {}
        wait_for(
            lambda: len(_connections(vhost, "layer-empty")) == 2, 30, "both connections to open"
        )
        empty.close()
        finished.close()
        wait_for(lambda: _connections(vhost, "layer-empty") == [], 30, "both connections to close")
