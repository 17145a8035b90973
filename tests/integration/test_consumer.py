"""broker.consumer and topology.declare_all against the real broker."""

from __future__ import annotations

import time

import pika
import pytest

from broker import topology
from broker.consumer import Consumer
from broker.errors import ConnectionLost
from broker.peek import consumers
from broker.session import Incoming
from broker.settings import BrokerSettings
from tests.integration.helpers import channel, queue_depth, wait_for

pytestmark = pytest.mark.broker


def test_declare_all_declares_the_shared_queues(amqp_url: str) -> None:
    settings = BrokerSettings.from_env(amqp_url)
    topology.declare_all(settings)
    topology.declare_all(settings)  # idempotent
    for queue in (topology.ACK_QUEUE, topology.FLEET_QUEUE, topology.REQUEST_QUEUE):
        assert queue_depth(amqp_url, queue) == 0
    assert consumers(settings, topology.ACK_QUEUE) == 0


def test_consumer_hands_over_incoming_and_acks_through_a_tag(amqp_url: str) -> None:
    settings = BrokerSettings.from_env(amqp_url)
    got: list[Incoming] = []
    with Consumer(settings, prefetch=10) as consumer:
        consumer.open()
        consumer.consume(topology.FLEET_QUEUE, got.append)
        assert consumers(settings, topology.FLEET_QUEUE) == 1
        connection, ch = channel(amqp_url)
        try:
            for i in range(3):
                props = pika.BasicProperties(message_id=f"m{i}", user_id="guest")
                ch.basic_publish(topology.ACK_EXCHANGE, "hello.PC001", b"x", props)
        finally:
            connection.close()

        def three() -> bool:
            consumer.pump(0.1)
            return len(got) == 3

        wait_for(three, 20, "three deliveries")
        assert [m.message_id for m in got] == ["m0", "m1", "m2"]
        assert {m.user_id for m in got} == {"guest"}
        assert all(m.queue == topology.FLEET_QUEUE and not m.redelivered for m in got)
        consumer.ack_through(got[-1].delivery_tag)
        consumer.pump(0.1)
    assert queue_depth(amqp_url, topology.FLEET_QUEUE) == 0


def test_private_queue_gets_a_copy_of_what_its_keys_route(amqp_url: str) -> None:
    settings = BrokerSettings.from_env(amqp_url)
    got: list[Incoming] = []
    with Consumer(settings) as consumer:
        consumer.open()
        queue = consumer.private_queue(topology.ACK_EXCHANGE, [topology.ack_routing_key("A1")])
        consumer.consume(queue, got.append, auto_ack=True)
        connection, ch = channel(amqp_url)
        try:
            ch.basic_publish(topology.ACK_EXCHANGE, topology.ack_routing_key("B2"), b"b")
            ch.basic_publish(topology.ACK_EXCHANGE, topology.ack_routing_key("A1"), b"a")
        finally:
            connection.close()

        def one() -> bool:
            consumer.pump(0.1)
            return len(got) == 1

        wait_for(one, 20, "the bound key's message")
        consumer.pump(0.3)
        assert [m.body for m in got] == [b"a"]
    # the durable ack queue still has both: the private queue took copies
    assert queue_depth(amqp_url, topology.ACK_QUEUE) == 2


def pump_until_lost(consumer: Consumer, timeout: float = 20) -> ConnectionLost:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            consumer.pump(0.2)
        except ConnectionLost as lost:
            return lost
    raise AssertionError(f"pump went on idling for {timeout} s")


def test_a_consumer_whose_queue_is_deleted_raises_connection_lost(amqp_url: str) -> None:
    settings = BrokerSettings.from_env(amqp_url)
    with Consumer(settings, prefetch=10) as consumer:
        consumer.open()
        consumer.consume(topology.FLEET_QUEUE, lambda incoming: None)
        consumer.pump(0.1)
        connection, ch = channel(amqp_url)
        try:
            ch.queue_delete(topology.FLEET_QUEUE)
        finally:
            connection.close()
        lost = pump_until_lost(consumer)
    assert f"cancelled the consumer of {topology.FLEET_QUEUE}" in str(lost)


def test_a_consumer_whose_channel_the_broker_closes_raises_connection_lost(
    amqp_url: str,
) -> None:
    settings = BrokerSettings.from_env(amqp_url)
    with Consumer(settings, prefetch=10) as consumer:
        consumer.open()
        consumer.consume(topology.FLEET_QUEUE, lambda incoming: None)
        consumer.pump(0.1)
        consumer.ack_through(4242)  # an unknown delivery tag: the broker closes the channel
        lost = pump_until_lost(consumer)
    assert "closed the consuming channel" in str(lost)
