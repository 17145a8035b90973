"""A requesting service's side of ``setevnt.requests``: confirmed requests, direct replies.

Replies come through RabbitMQ's direct reply-to on the same channel the requests are
published from, so a requester needs no queue of its own and no permission beyond
writing to the request exchange. Not thread-safe: one thread publishes and pumps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pe

from broker import topology
from broker.connection import close_quietly, open_blocking, translate_errors
from broker.errors import BrokerRefused
from broker.settings import BrokerSettings


@dataclass(frozen=True, slots=True)
class Reply:
    correlation_id: str | None
    body: bytes


class RequestChannel:
    def __init__(self, settings: BrokerSettings, on_reply: Callable[[Reply], None]) -> None:
        self._settings = settings
        self._on_reply = on_reply
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def open(self) -> None:
        self._connection = open_blocking(self._settings)
        try:
            with translate_errors("opening the request channel"):
                self._channel = self._connection.channel()
                # Direct reply-to: consume (no-ack, as it requires) before publishing.
                self._channel.basic_consume(topology.DIRECT_REPLY_TO, self._deliver, auto_ack=True)
                self._channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close_quietly(self._connection)
        self._connection = None

    def publish(
        self,
        body: bytes,
        *,
        message_type: str,
        correlation_id: str,
        expiration_ms: int | None = None,
        user_id: str | None = None,
    ) -> None:
        """Publish one request and wait for the broker's confirm.

        ``user_id`` defaults to this connection's user; the broker refuses any other
        (406, raised as :class:`broker.BrokerRefused`), which is what makes it trustworthy.
        ``expiration_ms``: a request nobody took by then is dead-lettered, not run late.
        """
        properties = pika.BasicProperties(
            content_type="application/msgpack",
            type=message_type,
            delivery_mode=2,
            correlation_id=correlation_id,
            reply_to=topology.DIRECT_REPLY_TO,
            user_id=user_id if user_id is not None else self._settings.username,
            app_id=self._settings.connection_name,
            expiration=str(expiration_ms) if expiration_ms is not None else None,
        )
        with translate_errors(f"publishing to {topology.REQUEST_EXCHANGE}"):
            try:
                self._channel.basic_publish(
                    topology.REQUEST_EXCHANGE, "", body, properties, mandatory=True
                )
            except pe.UnroutableError:
                raise BrokerRefused(
                    f"{topology.REQUEST_EXCHANGE} has no queue: is the dispatcher's topology "
                    "declared (setevnt-dispatcher declare)?"
                ) from None
            except pe.NackError:
                raise BrokerRefused(
                    f"the broker refused the request ({topology.REQUEST_QUEUE} full?)"
                ) from None

    def pump(self, seconds: float) -> None:
        """Receive replies for up to ``seconds``."""
        assert self._connection is not None, "open() first"
        with translate_errors("waiting for replies"):
            self._connection.process_data_events(time_limit=seconds)

    def _deliver(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._on_reply(Reply(properties.correlation_id, body))
