"""A consuming session: one connection to receive, one to publish confirmed replies.

Used by agents (and the fleet simulator). Consuming and publishing are on separate
connections because a memory alarm blocks publishing connections: acks may stall, but
deliveries keep flowing and heartbeats on the consuming side keep being answered.
Everything runs on the thread that calls :meth:`pump`; workers hand results back with
:meth:`call_threadsafe`, the only pika call that is safe from another thread.

A session that can no longer consume says so: :meth:`pump` raises ConnectionLost when the
broker closed a channel (a delivery held past its ``consumer_timeout``, a settle it
refused) or cancelled the consumer (its queue was deleted), so the supervisor builds a
new session instead of idling without a consumer. A consumer callback that raises gets
its delivery dead-lettered and counted (:attr:`Session.poisoned`); consuming goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pe

from broker.connection import close_quietly, open_blocking, translate, translate_errors
from broker.errors import BrokerError, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    delivery_tag: int
    body: bytes
    message_id: str | None
    redelivered: bool
    queue: str
    headers: dict[str, object] | None = None
    user_id: str | None = None  # validated by the broker: the publishing connection's user
    reply_to: str | None = None
    correlation_id: str | None = None


class Session:
    def __init__(self, settings: BrokerSettings, *, prefetch: int = 1) -> None:
        self._settings = settings
        self._prefetch = prefetch
        self._consume_conn: pika.BlockingConnection | None = None
        self._publish_conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._publish_channel: Any = None
        self._cancelled: str | None = None  # a consumer the broker cancelled, by queue
        self.poisoned = 0  # deliveries whose callback raised, dead-lettered

    def open(self) -> None:
        self._consume_conn = open_blocking(self._settings)
        try:
            self._publish_conn = open_blocking(
                self._settings.named(f"{self._settings.connection_name} (publish)")
            )
            with translate_errors("opening channels"):
                self._channel = self._consume_conn.channel()
                self._channel.basic_qos(prefetch_count=self._prefetch)
                self._publish_channel = self._publish_conn.channel()
                self._publish_channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close_quietly(self._consume_conn)
        close_quietly(self._publish_conn)
        self._consume_conn = self._publish_conn = None

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def consume(self, queue: str, on_message: Callable[[Incoming], None]) -> str:
        def deliver(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            try:
                on_message(incoming(queue, method, properties, body))
            except BrokerError:
                raise  # the connection's trouble, not the message's: rebuild, redeliver
            except Exception:
                self._poisoned(queue, method.delivery_tag)

        def cancelled(frame: Any) -> None:
            self._cancelled = queue

        with translate_errors(f"consuming {queue}"):
            self._channel.add_on_cancel_callback(cancelled)
            tag: str = self._channel.basic_consume(queue, deliver)
            return tag

    def _poisoned(self, queue: str, delivery_tag: int) -> None:
        """A callback raised on this delivery: dead-letter it, or it would come back."""
        self.poisoned += 1
        log.exception(
            "consumer of %s failed on delivery %d: dead-lettering it", queue, delivery_tag
        )
        self.settle(delivery_tag, dead_letter=True)

    def cancel(self, consumer_tag: str) -> None:
        with translate_errors("cancelling consumer"):
            self._channel.basic_cancel(consumer_tag)

    def settle(self, delivery_tag: int, *, dead_letter: bool = False) -> None:
        """Ack a delivery, or reject it without requeue so it goes to the dead letters."""
        with translate_errors("settling a delivery"):
            if dead_letter:
                self._channel.basic_nack(delivery_tag, requeue=False)
            else:
                self._channel.basic_ack(delivery_tag)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_type: str,
        message_id: str | None = None,
        persistent: bool = True,
        user_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, object] | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm (raises a BrokerError if refused).

        ``user_id`` defaults to this connection's user: the broker checks it, so a
        receiver can trust it to name the sender.
        """
        properties = pika.BasicProperties(
            content_type="application/msgpack",
            type=message_type,
            message_id=message_id,
            delivery_mode=2 if persistent else 1,
            app_id=self._settings.connection_name,
            user_id=user_id if user_id is not None else self._settings.username,
            correlation_id=correlation_id,
            headers=headers,
        )
        with translate_errors(f"publishing to {exchange or 'default exchange'}"):
            self._publish_channel.basic_publish(exchange, routing_key, body, properties)

    def pump(self, seconds: float) -> None:
        """Process deliveries and callbacks for up to ``seconds`` on both connections."""
        assert self._consume_conn is not None and self._publish_conn is not None
        with translate_errors("receiving"):
            self._consume_conn.process_data_events(time_limit=seconds)
            self._publish_conn.process_data_events(time_limit=0)
        self._check_channels()

    def _check_channels(self) -> None:
        """Raise ConnectionLost when the broker took the consumer or a channel away."""
        if self._cancelled is not None:
            raise ConnectionLost(
                f"the broker cancelled the consumer of {self._cancelled} (was the queue deleted?)"
            )
        if self._channel is not None and self._channel.is_closed:
            raise ConnectionLost(
                "the broker closed the consuming channel (a delivery held past its "
                "consumer_timeout, or a settle it refused)"
            )
        if self._publish_channel is not None and self._publish_channel.is_closed:
            raise ConnectionLost("the broker closed the publishing channel")

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the pumping thread; False when the session is already gone."""
        connection = self._consume_conn
        if connection is None:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except (pe.AMQPError, OSError) as exc:
            log.debug("session gone, dropping callback: %s", translate(exc))
            return False
        return True


def incoming(queue: str, method: Any, properties: Any, body: bytes) -> Incoming:
    """Our own record of one pika delivery, for handlers outside this package."""
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
