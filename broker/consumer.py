"""Consuming on one connection: queues, handlers that see an :class:`Incoming`, settling.

Used by the dispatcher's collector and ack waiter. A consumer is a
:class:`broker.link.Link` that declares the shared topology on opening: handlers
get our own :class:`broker.link.Incoming`, never a pika object, every pika failure
leaves as a :class:`broker.errors.BrokerError`, and :meth:`Consumer.pump` raises
ConnectionLost once the broker closed the channel or cancelled a consumer (a queue
deleted under it). Everything runs on the thread that calls :meth:`Consumer.pump`.
Reconnecting is the caller's supervisor's job (:func:`broker.supervisor.supervise`): a
consumer whose connection failed is closed and a new one is built, and the deliveries it
had not settled come back, redelivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from broker import topology
from broker.connection import translate_errors
from broker.link import Incoming, Link
from broker.settings import BrokerSettings

Handler = Callable[[Incoming], None]


class Consumer:
    """One connection and one channel; the shared topology is declared on opening.

    ``prefetch`` bounds the deliveries not yet settled (None: no bound, as when
    consuming with ``auto_ack``).
    """

    def __init__(self, settings: BrokerSettings, *, prefetch: int | None = None) -> None:
        self._link = Link(settings, prefetch=prefetch)
        self._cluster = settings.cluster

    def open(self, doing: str = "opening a consumer") -> None:
        self._link.open(doing)
        try:
            with translate_errors(doing):
                topology.declare_core(self._link.channel, quorum=self._cluster)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def private_queue(self, exchange: str, routing_keys: Iterable[str]) -> str:
        """Declare an exclusive, server-named queue bound to ``exchange`` with each key; it
        gets a copy of what those keys route, and goes with this connection."""
        channel = self._link.channel
        with translate_errors("declaring a private queue"):
            declared = channel.queue_declare("", exclusive=True, auto_delete=True)
            queue: str = declared.method.queue
            for key in routing_keys:
                channel.queue_bind(queue, exchange, routing_key=key)
        return queue

    def consume(self, queue: str, handler: Handler, *, auto_ack: bool = False) -> None:
        """Hand every delivery of ``queue`` to ``handler``; unless ``auto_ack``, settle it
        later with :meth:`ack_through`."""
        self._link.consume(queue, handler, auto_ack=auto_ack)

    def pump(self, seconds: float, doing: str = "receiving") -> None:
        """Process deliveries for up to ``seconds``; handlers run inside this call."""
        self._link.pump(seconds, doing)

    def waiting(self, queue: str) -> int:
        """How many messages of ``queue`` are ready for a consumer (a passive declare)."""
        with translate_errors(f"counting {queue}"):
            declared = self._link.channel.queue_declare(queue, passive=True)
        return int(declared.method.message_count)

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every delivery up to and including ``delivery_tag``."""
        self._link.ack(delivery_tag, multiple=True)
