"""A consuming session: one link to receive, one to publish confirmed replies.

Used by agents and the dispatcher's request intake. Consuming and publishing are on
separate connections because a memory alarm blocks publishing connections: acks may
stall, but deliveries keep flowing and heartbeats on the consuming side keep being
answered. Everything runs on the thread that calls :meth:`pump`; workers hand results
back with :meth:`call_threadsafe`, the only call that is safe from another thread.

Both connections are :class:`broker.link.Link` s, so a session that can no longer
consume says so: :meth:`pump` raises ConnectionLost when the broker closed a channel (a
delivery held past its ``consumer_timeout``, a settle it refused) or cancelled the
consumer (its queue was deleted), and the supervisor builds a new session. A consumer
callback that raises gets its delivery dead-lettered and counted
(:attr:`Session.poisoned`); consuming goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker.connection import message_properties
from broker.errors import BrokerError
from broker.link import Incoming, Link
from broker.settings import BrokerSettings

__all__ = ["Incoming", "Session"]

log = logging.getLogger(__name__)


class Session:
    def __init__(self, settings: BrokerSettings, *, prefetch: int = 1) -> None:
        self._settings = settings
        self._receiving = Link(settings, prefetch=prefetch)
        self._publishing = Link(
            settings.named(f"{settings.connection_name} (publish)"),
            confirms=True,
            role="publishing",
        )
        self.poisoned = 0  # deliveries whose callback raised, dead-lettered

    def open(self) -> None:
        self._receiving.open("opening channels")
        try:
            self._publishing.open("opening channels")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._receiving.close()
        self._publishing.close()

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def consume(self, queue: str, on_message: Callable[[Incoming], None]) -> str:
        def deliver(message: Incoming) -> None:
            try:
                on_message(message)
            except BrokerError:
                raise  # the connection's trouble, not the message's: rebuild, redeliver
            except Exception:
                self._poisoned(queue, message.delivery_tag)

        return self._receiving.consume(queue, deliver)

    def _poisoned(self, queue: str, delivery_tag: int) -> None:
        """A callback raised on this delivery: dead-letter it, or it would come back."""
        self.poisoned += 1
        log.exception(
            "consumer of %s failed on delivery %d: dead-lettering it", queue, delivery_tag
        )
        self.settle(delivery_tag, dead_letter=True)

    def cancel(self, consumer_tag: str) -> None:
        self._receiving.cancel(consumer_tag)

    def settle(self, delivery_tag: int, *, dead_letter: bool = False) -> None:
        """Ack a delivery, or reject it without requeue so it goes to the dead letters."""
        if dead_letter:
            self._receiving.reject(delivery_tag)
        else:
            self._receiving.ack(delivery_tag)

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
        properties = message_properties(
            self._settings,
            message_type,
            persistent=persistent,
            message_id=message_id,
            user_id=user_id,
            correlation_id=correlation_id,
            headers=headers,
        )
        self._publishing.publish(exchange, routing_key, body, properties)

    def pump(self, seconds: float) -> None:
        """Process deliveries and callbacks for up to ``seconds`` on both connections."""
        self._receiving.pump(seconds)
        self._publishing.pump(0)

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the pumping thread; False when the session is already gone."""
        return self._receiving.call_threadsafe(callback)
