"""The one place that names and declares setevnt's exchanges and queues.

Every declaration is idempotent (same arguments every time). Client queues are classic
queues: RabbitMQ 3.10 crashes under a storm with classic queue version 2, so no
``x-queue-version`` is ever asked for (see docs/operator.md). On a cluster the shared
queues are quorum queues (replicated: a node's loss loses no ack nor request), and a
policy spreads the client queues over the nodes (``min-masters``) instead of homing them
all on the node that provisions them; a single node keeps classic shared queues, and
:mod:`broker.migration` moves them to quorum queues when it becomes a cluster.

    dispatcher --(default exchange, key setevnt.client.<id>)--> setevnt.client.<id> --> agent
        expired / rejected commands --> setevnt.dead (exchange, fanout) --> setevnt.dead
    agent --(setevnt.acks, key ack.<id>)--> setevnt.acks (queue) --> collector
    agent --(setevnt.acks, key hello.<id>)--> setevnt.fleet (queue) --> fleet registry
    publishers --(setevnt.acks, key report.<name>)--> setevnt.acks
    services --(setevnt.requests, fanout)--> setevnt.requests (queue) --> dispatcher intake
        refused requests --> setevnt.dead; replies --> the requester's reply-to
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from broker.connection import translate_errors
from broker.link import Link
from broker.settings import BrokerSettings

CLIENT_QUEUE_PREFIX = "setevnt.client."
ACK_EXCHANGE = "setevnt.acks"
ACK_QUEUE = "setevnt.acks"
FLEET_QUEUE = "setevnt.fleet"
DEAD_EXCHANGE = "setevnt.dead"
DEAD_QUEUE = "setevnt.dead"
REQUEST_EXCHANGE = "setevnt.requests"
REQUEST_QUEUE = "setevnt.requests"
# RabbitMQ's direct reply-to: a requester consumes this pseudo-queue (no queue, no
# permissions to declare one) and replies reach it as amq.rabbitmq.reply-to.<token>.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# Where replies may go: direct reply-to or a server-named (amq.gen-) exclusive queue.
# Anything else could point a reply from the all-powerful dispatcher at a client's queue.
_REPLY_ADDRESS = re.compile(
    r"^(amq\.rabbitmq\.reply-to\.[A-Za-z0-9+/=._-]{1,400}|amq\.gen-[A-Za-z0-9_-]{1,64})$"
)
REQUEST_QUEUE_MAX = 10_000
# A flood from a compromised client is refused at publish (the sender's confirm is a
# nack) instead of growing the queue until the broker's memory alarm stops everyone.
ACK_QUEUE_MAX = 100_000

ACK_KEY = "ack"
HELLO_KEY = "hello"
REPORT_KEY = "report"

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Channel(Protocol):
    """The part of a pika channel (blocking or not) that declaring needs."""

    def exchange_declare(self, exchange: str, exchange_type: Any = ..., **kw: Any) -> Any: ...

    def queue_declare(self, queue: str, **kw: Any) -> Any: ...

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = ...) -> Any: ...


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Bounds on a client's command queue.

    A command older than ``message_ttl`` is dead-lettered even if nobody reads the queue
    (a queue-level TTL expires promptly; a per-message one only at the head). When the
    queue is full new publishes are refused (nacked) so the dispatcher reports it,
    instead of silently dropping the oldest command.
    """

    message_ttl_ms: int = 24 * 3600 * 1000
    max_length: int = 1000


# RabbitMQ refuses a per-message expiration above 2^32-1 ms ("invalid expiration").
MAX_EXPIRATION = (2**32 - 1) / 1000
# The client queues drop a command older than their own message TTL, whatever it says.
QUEUE_TTL = QueueLimits().message_ttl_ms / 1000
MAX_TTL = min(QUEUE_TTL, MAX_EXPIRATION)


def ttl_problem(ttl: float) -> str | None:
    """Why a command's ``ttl`` (seconds) cannot be honoured by the broker, or None."""
    if not 0 < ttl < math.inf:
        return "must be a positive, finite number of seconds"
    if ttl > MAX_EXPIRATION:
        return f"is above RabbitMQ's per-message expiration limit ({MAX_EXPIRATION:g} s)"
    if ttl > QUEUE_TTL:
        return (
            f"is longer than the client queues' message TTL ({QUEUE_TTL:g} s): "
            "the broker drops a command by then"
        )
    return None


PROBE_QUEUE_PREFIX = "setevnt.probe."


def probe_queue() -> str:
    """A new name for a short-lived exclusive queue that proves which broker an API is."""
    return f"{PROBE_QUEUE_PREFIX}{uuid.uuid4().hex}"


def client_queue(client_id: str) -> str:
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"invalid client id {client_id!r}: 1-64 of letters, digits, '_', '.', '-'")
    return CLIENT_QUEUE_PREFIX + client_id


def ack_routing_key(client_id: str) -> str:
    return f"{ACK_KEY}.{client_id}"


def hello_routing_key(client_id: str) -> str:
    return f"{HELLO_KEY}.{client_id}"


def report_routing_key(publisher: str) -> str:
    return f"{REPORT_KEY}.{re.sub(r'[^A-Za-z0-9_-]', '_', publisher)[:64]}"


def reply_address_ok(reply_to: str) -> bool:
    return _REPLY_ADDRESS.fullmatch(reply_to) is not None


# Client queues on a cluster: each is homed on the node with the fewest queues when it is
# declared. A policy, not a queue argument: an argument would make every existing queue
# "inequivalent" to its next declare, a policy applies to whoever declares.
PLACEMENT_POLICY = "setevnt-client-placement"
PLACEMENT_PATTERN = r"^setevnt\.client\."
PLACEMENT_DEFINITION: dict[str, Any] = {"queue-master-locator": "min-masters"}

QUORUM = "quorum"
CLASSIC = "classic"


def shared_queue_type(quorum: bool) -> str:
    return QUORUM if quorum else CLASSIC


def shared_queues(quorum: bool = False) -> dict[str, dict[str, Any]]:
    """The shared queues and their arguments, by name."""
    kind = shared_queue_type(quorum)
    return {
        DEAD_QUEUE: {"x-queue-type": kind, "x-max-length": 100_000},
        ACK_QUEUE: ack_queue_arguments(quorum),
        # Heartbeats are only worth their latest value: bound the backlog when nobody reads.
        FLEET_QUEUE: {"x-queue-type": kind, "x-message-ttl": 3600 * 1000, "x-max-length": 100_000},
        REQUEST_QUEUE: request_queue_arguments(quorum),
    }


# Each shared queue's bindings: (exchange, routing key).
SHARED_BINDINGS: dict[str, tuple[tuple[str, str], ...]] = {
    DEAD_QUEUE: ((DEAD_EXCHANGE, ""),),
    ACK_QUEUE: ((ACK_EXCHANGE, f"{ACK_KEY}.#"), (ACK_EXCHANGE, f"{REPORT_KEY}.#")),
    FLEET_QUEUE: ((ACK_EXCHANGE, f"{HELLO_KEY}.#"),),
    REQUEST_QUEUE: ((REQUEST_EXCHANGE, ""),),
}


def request_queue_arguments(quorum: bool = False) -> dict[str, Any]:
    # Refused requests are rejected into the dead letters; a flood beyond the bound is
    # refused at publish (the requester's confirm is a nack) instead of dropped silently.
    return {
        "x-queue-type": shared_queue_type(quorum),
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-max-length": REQUEST_QUEUE_MAX,
        "x-overflow": "reject-publish",
    }


def ack_queue_arguments(quorum: bool = False) -> dict[str, Any]:
    return {
        "x-queue-type": shared_queue_type(quorum),
        "x-max-length": ACK_QUEUE_MAX,
        "x-overflow": "reject-publish",
    }


def client_queue_arguments(limits: QueueLimits) -> dict[str, Any]:
    return {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-message-ttl": limits.message_ttl_ms,
        "x-max-length": limits.max_length,
        "x-overflow": "reject-publish",
    }


def declare_exchanges(channel: Channel) -> None:
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
    channel.exchange_declare(ACK_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(REQUEST_EXCHANGE, exchange_type="fanout", durable=True)


def declare_shared_queue(channel: Channel, name: str, *, quorum: bool = False) -> None:
    """Declare one shared queue and its bindings."""
    channel.queue_declare(name, durable=True, arguments=shared_queues(quorum)[name])
    for exchange, key in SHARED_BINDINGS[name]:
        channel.queue_bind(name, exchange, routing_key=key)


def declare_core(channel: Channel, *, quorum: bool = False) -> None:
    """Declare the shared exchanges and queues (ack, fleet and request paths, dead
    letters); ``quorum`` on a cluster."""
    declare_exchanges(channel)
    for name in shared_queues(quorum):
        declare_shared_queue(channel, name, quorum=quorum)


def declare_all(settings: BrokerSettings, *, doing: str = "declaring the topology") -> None:
    """Open a connection, declare the shared exchanges and queues, close it (raises a
    BrokerError)."""
    with Link(settings) as link, translate_errors(doing):
        declare_core(link.channel, quorum=settings.cluster)


def declare_client(
    channel: Channel, client_id: str, limits: QueueLimits | None = None, **options: Any
) -> str:
    """Provision one client's command queue; call when a client is first known.

    ``options`` go to ``queue_declare`` as they are (an asynchronous channel's
    ``callback``), never the queue's arguments: those are decided here only.
    """
    name = client_queue(client_id)
    channel.queue_declare(
        name, durable=True, arguments=client_queue_arguments(limits or QueueLimits()), **options
    )
    return name
