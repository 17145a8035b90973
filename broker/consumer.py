"""Consuming on one connection: queues, handlers that see an :class:`Incoming`, settling.

Used by the dispatcher's collector and ack waiter. The consumer owns its connection and
channel; handlers get our own :class:`broker.session.Incoming`, never a pika object, and
every pika failure leaves as a :class:`broker.errors.BrokerError`. Everything runs on the
thread that calls :meth:`Consumer.pump`. Reconnecting is the caller's supervisor's job
(:func:`broker.supervisor.supervise`): a consumer whose connection failed is closed and a
new one is built, and the deliveries it had not settled come back, redelivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pika

from broker import topology
from broker.connection import close_quietly, open_blocking, translate_errors
from broker.session import Incoming, incoming
from broker.settings import BrokerSettings

Handler = Callable[[Incoming], None]


class Consumer:
    """One connection and one channel; the shared topology is declared on opening.

    ``prefetch`` bounds the deliveries not yet settled (None: no bound, as when
    consuming with ``auto_ack``).
    """

    def __init__(self, settings: BrokerSettings, *, prefetch: int | None = None) -> None:
        self._settings = settings
        self._prefetch = prefetch
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def open(self, doing: str = "opening a consumer") -> None:
        self._connection = open_blocking(self._settings)
        try:
            with translate_errors(doing):
                self._channel = self._connection.channel()
                topology.declare_core(self._channel, quorum=self._settings.cluster)
                if self._prefetch is not None:
                    self._channel.basic_qos(prefetch_count=self._prefetch)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close_quietly(self._connection)
        self._connection = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def private_queue(self, exchange: str, routing_keys: Iterable[str]) -> str:
        """Declare an exclusive, server-named queue bound to ``exchange`` with each key; it
        gets a copy of what those keys route, and goes with this connection."""
        with translate_errors("declaring a private queue"):
            declared = self._channel.queue_declare("", exclusive=True, auto_delete=True)
            queue: str = declared.method.queue
            for key in routing_keys:
                self._channel.queue_bind(queue, exchange, routing_key=key)
        return queue

    def consume(self, queue: str, handler: Handler, *, auto_ack: bool = False) -> None:
        """Hand every delivery of ``queue`` to ``handler``; unless ``auto_ack``, settle it
        later with :meth:`ack_through`."""

        def deliver(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            handler(incoming(queue, method, properties, body))

        with translate_errors(f"consuming {queue}"):
            self._channel.basic_consume(queue, deliver, auto_ack=auto_ack)

    def pump(self, seconds: float, doing: str = "receiving") -> None:
        """Process deliveries for up to ``seconds``; handlers run inside this call."""
        assert self._connection is not None
        with translate_errors(doing):
            self._connection.process_data_events(time_limit=seconds)

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every delivery up to and including ``delivery_tag``."""
        with translate_errors("acknowledging deliveries"):
            self._channel.basic_ack(delivery_tag, multiple=True)
