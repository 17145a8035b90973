"""Looking at a queue's messages without taking them off it.

``basic.get`` without acknowledging, up to a limit, then one ``basic.nack(multiple,
requeue)``: the broker puts every message back where it was (a requeued message keeps
its place in a classic queue), marked redelivered. Nothing is consumed, whatever the
messages hold; only their properties are kept, and of their bodies only the size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.connection import translate_errors
from broker.link import Link
from broker.settings import BrokerSettings


@dataclass(frozen=True, slots=True)
class Peeked:
    """One message as the broker holds it. Every field is as its publisher (or a
    dead-lettering broker) set it: any type pika decodes to, or None."""

    size: int
    message_id: object
    message_type: object
    user_id: object
    headers: Mapping[str, object]
    redelivered: bool


@dataclass(frozen=True, slots=True)
class Peek:
    depth: int  # messages in the queue when it was looked at
    messages: list[Peeked]


def consumers(settings: BrokerSettings, queue: str) -> int:
    """How many consumers ``queue`` has (a queue that does not exist is a
    :class:`broker.errors.BrokerRefused` with code 404)."""
    with Link(settings) as link, translate_errors(f"looking at {queue}"):
        count: int = link.channel.queue_declare(queue, passive=True).method.consumer_count
    return count


def peek(settings: BrokerSettings, queue: str, limit: int) -> Peek:
    """The first ``limit`` messages of ``queue``, left in it (raises a BrokerError; a
    queue that does not exist is a :class:`broker.errors.BrokerRefused` with code 404)."""
    # Closing the link requeues them too, if the nack never went out.
    with Link(settings) as link, translate_errors(f"reading {queue}"):
        channel = link.channel
        depth = channel.queue_declare(queue, passive=True).method.message_count
        messages = _gets(channel, queue, min(limit, depth))
        if messages:
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        channel.close()
    return Peek(depth=depth, messages=messages)


def _gets(channel: Any, queue: str, limit: int) -> list[Peeked]:
    got = []
    for _ in range(limit):
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        headers = properties.headers if isinstance(properties.headers, dict) else {}
        got.append(
            Peeked(
                size=len(body or b""),
                message_id=properties.message_id,
                message_type=properties.type,
                user_id=properties.user_id,
                headers=headers,
                redelivered=bool(method.redelivered),
            )
        )
    return got
