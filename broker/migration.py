"""Moving a single-node deployment's classic shared queues to quorum queues.

A queue's type cannot change, and the shared queues may hold acks, heartbeats, requests
and dead letters that must not be lost, so each classic shared queue is replaced:

1. a quorum queue ``<name>.moving`` is declared and bound like it; the classic queue is
   unbound: from now on new messages go to the new queue only;
2. the classic queue's messages are moved into it (each one published with a confirm,
   then acked), and the empty classic queue is deleted;
3. ``<name>`` is declared again as a quorum queue with its bindings, ``<name>.moving``
   is unbound, its messages are moved into ``<name>``, and it is deleted.

For the instant between binding ``<name>`` and unbinding ``<name>.moving`` a message may
reach both; every shared queue's consumer takes a repeat (acks and heartbeats by command
and client id, requests by their idempotency key). Messages keep their properties,
including ``user_id``, which the collector trusts: RabbitMQ lets a connection publish
another user's ``user_id`` only when its user has the ``impersonator`` tag, so this runs
as such a user (the procedure is in docs/operator.md). Stop ``setevnt-dispatcher serve``
first: a consumer would keep the classic queue from being deleted.
"""

from __future__ import annotations

import logging
from typing import Any

import pika.exceptions as pe

from broker import topology
from broker.connection import close_quietly, open_blocking, translate, translate_errors
from broker.errors import BrokerRefused
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

MOVING_SUFFIX = ".moving"


def move_to_quorum(settings: BrokerSettings) -> dict[str, int]:
    """Replace every classic shared queue by a quorum queue; returns the messages moved
    per queue replaced (a queue already quorum is left alone and not listed)."""
    connection = open_blocking(settings.named(f"{settings.connection_name} (move-to-quorum)"))
    moved: dict[str, int] = {}
    try:
        with translate_errors("moving the shared queues to quorum queues"):
            topology.declare_exchanges(connection.channel())
            for name in topology.shared_queues():
                if _is_classic(connection, name):
                    moved[name] = _replace(connection, name)
    finally:
        close_quietly(connection)
    return moved


def _is_classic(connection: Any, name: str) -> bool:
    """Declaring it as a quorum queue: refused as inequivalent when it is classic (a
    queue that did not exist is now a quorum queue, as wanted)."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, durable=True, arguments=topology.shared_queues(True)[name])
    except pe.ChannelClosedByBroker as exc:
        if exc.reply_code == 406 and "x-queue-type" in exc.reply_text:
            return True
        raise
    channel.close()
    return False


def _replace(connection: Any, name: str) -> int:
    channel = connection.channel()
    channel.confirm_delivery()
    sink = connection.channel()  # publishes with confirms apart from the gets
    sink.confirm_delivery()
    moving = name + MOVING_SUFFIX
    arguments = topology.shared_queues(True)[name]
    channel.queue_declare(moving, durable=True, arguments=arguments)
    for exchange, key in topology.SHARED_BINDINGS[name]:
        channel.queue_bind(moving, exchange, routing_key=key)
    for exchange, key in topology.SHARED_BINDINGS[name]:
        channel.queue_unbind(name, exchange, routing_key=key)
    count = _move(channel, sink, name, moving)
    channel.queue_delete(name, if_empty=True)
    topology.declare_shared_queue(channel, name, quorum=True)
    for exchange, key in topology.SHARED_BINDINGS[name]:
        channel.queue_unbind(moving, exchange, routing_key=key)
    # Unbound now, so it stays empty once moved; quorum queues refuse ``if_empty``.
    while _move(channel, sink, moving, name) or _depth(channel, moving):
        pass
    channel.queue_delete(moving)
    channel.close()
    sink.close()
    log.info("%s is a quorum queue now; %d message(s) moved", name, count)
    return count


def _depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def _move(channel: Any, sink: Any, source: str, target: str) -> int:
    """Every message of ``source`` into ``target``: published with a confirm, then acked."""
    count = 0
    while True:
        method, properties, body = channel.basic_get(source, auto_ack=False)
        if method is None:
            return count
        if properties.headers:  # the quorum queue's own count of deliveries, not the sender's
            properties.headers.pop("x-delivery-count", None)
        try:
            sink.basic_publish("", target, body, properties, mandatory=True)
        except (pe.UnroutableError, pe.NackError) as exc:
            raise BrokerRefused(f"moving a message from {source} to {target}: {exc}") from None
        except pe.ChannelClosedByBroker as exc:
            raise translate(exc, f"moving a message from {source} to {target}") from exc
        channel.basic_ack(method.delivery_tag)
        count += 1
