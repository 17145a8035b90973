"""The owner of every blocking connection: a :class:`Link` is one named connection and
its one channel.

A link opens, consumes (handlers get an :class:`Incoming`, never a pika object), acks
or rejects, publishes with confirms (pika waits for each inside ``basic_publish``),
pumps and closes quietly, and every pika failure leaves it as a
:class:`broker.errors.BrokerError`. A link that can no longer do its job says so:
:meth:`Link.pump` raises :class:`ConnectionLost` once the broker closed its channel or
cancelled one of its consumers, so a supervisor builds a new one instead of idling.
The consuming session, the collector's consumer, the requester and the one-shot
declares and peeks are built on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pe

from broker.connection import close_quietly, open_blocking, translate, translate_errors
from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One delivery, as handlers outside this package see it."""

    delivery_tag: int
    body: bytes
    message_id: str | None
    redelivered: bool
    queue: str
    headers: dict[str, object] | None = None
    user_id: str | None = None  # validated by the broker: the publishing connection's user
    reply_to: str | None = None
    correlation_id: str | None = None


def incoming(queue: str, method: Any, properties: Any, body: bytes) -> Incoming:
    """Our own record of one pika delivery."""
    return Incoming(
        delivery_tag=method.delivery_tag,
        body=body,
        message_id=properties.message_id,
        redelivered=bool(method.redelivered),
        queue=queue,
        headers=properties.headers,
        user_id=properties.user_id,
        reply_to=properties.reply_to,
        correlation_id=properties.correlation_id,
    )


class Link:
    """One named blocking connection and its channel; not thread-safe except
    :meth:`call_threadsafe`.

    ``prefetch`` bounds the deliveries not yet settled (None: no bound); ``confirms``
    makes every :meth:`publish` wait for the broker's confirm; ``role`` names the
    channel in the errors that say the broker closed it.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        prefetch: int | None = None,
        confirms: bool = False,
        role: str = "consuming",
    ) -> None:
        self._settings = settings
        self._prefetch = prefetch
        self._confirms = confirms
        self._role = role
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._cancelled: str | None = None  # a queue whose consumer the broker cancelled
        self._settles = False  # a consumer acks its deliveries itself

    def open(self, doing: str = "opening a channel") -> None:
        """Connect and open the channel (raises a BrokerError; nothing is left open)."""
        self._cancelled = None
        self._settles = False
        self._consumers.clear()
        self._connection = open_blocking(self._settings)
        try:
            with translate_errors(doing):
                self._channel = self._connection.channel()
                self._channel.add_on_cancel_callback(self._on_cancel)
                if self._prefetch is not None:
                    self._channel.basic_qos(prefetch_count=self._prefetch)
                if self._confirms:
                    self._channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, which may already be dead; a close failure changes nothing."""
        close_quietly(self._connection)
        self._connection = self._channel = None

    def __enter__(self) -> Link:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def channel(self) -> Any:
        """The pika channel, for the declares and reads of other broker/ modules."""
        assert self._channel is not None, "open() first"
        return self._channel

    def consume(
        self, queue: str, handler: Callable[[Incoming], None], *, auto_ack: bool = False
    ) -> str:
        """Hand every delivery of ``queue`` to ``handler`` (inside :meth:`pump`); returns
        the consumer tag."""

        def deliver(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            handler(incoming(queue, method, properties, body))

        with translate_errors(f"consuming {queue}"):
            tag: str = self.channel.basic_consume(queue, deliver, auto_ack=auto_ack)
        self._consumers[tag] = queue
        self._settles = self._settles or not auto_ack
        return tag

    def cancel(self, consumer_tag: str) -> None:
        with translate_errors("cancelling consumer"):
            self.channel.basic_cancel(consumer_tag)
        self._consumers.pop(consumer_tag, None)

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        with translate_errors("acknowledging deliveries"):
            self.channel.basic_ack(delivery_tag, multiple=multiple)

    def reject(self, delivery_tag: int, *, requeue: bool = False) -> None:
        """Without requeue, the delivery goes to its queue's dead letters."""
        with translate_errors("rejecting a delivery"):
            self.channel.basic_nack(delivery_tag, requeue=requeue)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        mandatory: bool = False,
        unroutable: str | None = None,
        nacked: str | None = None,
    ) -> None:
        """Publish; with ``confirms``, return only once the broker confirmed it.

        A message the broker returned (``mandatory``) or nacked raises
        :class:`BrokerRefused` with ``unroutable`` or ``nacked`` as its text when given,
        else :class:`ConnectionLost`, like any other failure.
        """
        doing = f"publishing to {exchange or 'default exchange'}"
        try:
            self.channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pe.UnroutableError as exc:
            raise _refused(unroutable, exc, doing) from exc
        except pe.NackError as exc:
            raise _refused(nacked, exc, doing) from exc
        except (pe.AMQPError, OSError) as exc:
            raise translate(exc, doing) from exc

    def pump(self, seconds: float, doing: str = "receiving") -> None:
        """Process deliveries and callbacks for up to ``seconds``; raises ConnectionLost
        when the broker took the channel or a consumer away."""
        assert self._connection is not None, "open() first"
        with translate_errors(doing):
            self._connection.process_data_events(time_limit=seconds)
        self._check()

    def _check(self) -> None:
        if self._cancelled is not None:
            raise ConnectionLost(
                f"the broker cancelled the consumer of {self._cancelled} (was the queue deleted?)"
            )
        if self._channel is not None and self._channel.is_closed:
            why = (
                " (a delivery held past its consumer_timeout, or a settle it refused)"
                if self._settles
                else ""
            )
            raise ConnectionLost(f"the broker closed the {self._role} channel{why}")

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = self._consumers.pop(frame.method.consumer_tag, "a queue")

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the pumping thread; False when the link is already gone."""
        connection = self._connection
        if connection is None:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except (pe.AMQPError, OSError) as exc:
            log.debug("link gone, dropping callback: %s", translate(exc))
            return False
        return True


def _refused(text: str | None, exc: BaseException, doing: str) -> BrokerError:
    return BrokerRefused(text) if text is not None else translate(exc, doing)
