"""A requesting service's side of ``setevnt.requests``: confirmed requests, direct replies.

Replies come through RabbitMQ's direct reply-to on the same channel the requests are
published from, so a requester needs no queue of its own and no permission beyond
writing to the request exchange. The channel is a :class:`broker.link.Link` with
confirms. Not thread-safe: one thread publishes and pumps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker import topology
from broker.connection import message_properties, translate_errors
from broker.link import Incoming, Link
from broker.settings import BrokerSettings


@dataclass(frozen=True, slots=True)
class Reply:
    correlation_id: str | None
    body: bytes


class RequestChannel:
    def __init__(self, settings: BrokerSettings, on_reply: Callable[[Reply], None]) -> None:
        self._settings = settings
        self._on_reply = on_reply
        self._link = Link(settings, confirms=True, role="request")

    def open(self) -> None:
        doing = "opening the request channel"
        self._link.open(doing)
        try:
            with translate_errors(doing):
                # Direct reply-to: consume (no-ack, as it requires) before publishing.
                self._link.consume(topology.DIRECT_REPLY_TO, self._deliver, auto_ack=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._link.close()

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
        properties = message_properties(
            self._settings,
            message_type,
            correlation_id=correlation_id,
            reply_to=topology.DIRECT_REPLY_TO,
            user_id=user_id,
            expiration_ms=expiration_ms,
        )
        self._link.publish(
            topology.REQUEST_EXCHANGE,
            "",
            body,
            properties,
            mandatory=True,
            unroutable=(
                f"{topology.REQUEST_EXCHANGE} has no queue: is the dispatcher's topology "
                "declared (setevnt-dispatcher declare)?"
            ),
            nacked=f"the broker refused the request ({topology.REQUEST_QUEUE} full?)",
        )

    def pump(self, seconds: float) -> None:
        """Receive replies for up to ``seconds``."""
        self._link.pump(seconds, "waiting for replies")

    def _deliver(self, message: Incoming) -> None:
        self._on_reply(Reply(message.correlation_id, message.body))
