"""The client library for services: ask the dispatcher service to trigger events.

>>> with Client("amqp://helpdesk:secret@broker:5672/%2F") as client:
...     handle = client.trigger("CCIM32_STARTCYCLE", clients=["PC042"], idempotency_key="T-4711")
...     summary = handle.wait(timeout=120)

Unlike :class:`dispatcher.Dispatcher`, a ``Client`` publishes no commands itself: it sends
a request to ``setevnt.requests``, the dispatcher service decides (policy per broker user)
and publishes, so a service needs only a broker user that may write to that exchange.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import TypeVar

from broker.broker import Broker
from broker.requester import Reply
from broker.settings import BrokerSettings
from schemas.codec import DecodeError, decode_any, encode
from schemas.messages import (
    Message,
    RefusalReason,
    TriggerReply,
    TriggerRequest,
    TriggerSummary,
)
from schemas.refusals import RequestRefused

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class RequestTimeout(TimeoutError):
    """No reply came in time (is ``setevnt-dispatcher serve`` running?)."""


class Handle:
    """An accepted request: its storm, and a way to wait for its completion summary."""

    def __init__(self, client: Client, correlation_id: str, reply: TriggerReply) -> None:
        assert reply.storm_id is not None and reply.targets is not None
        self._client = client
        self._correlation_id = correlation_id
        self.reply = reply
        self.storm_id: str = reply.storm_id
        self.targets: int = reply.targets
        self.replayed = reply.replayed  # True: an earlier request with this key was answered
        self._summary: TriggerSummary | None = None

    def wait(self, timeout: float | None = None) -> TriggerSummary:
        """The summary, sent once every target answered finally or its command expired."""
        if self._summary is None:
            self._summary = self._client.await_reply(self._correlation_id, TriggerSummary, timeout)
        return self._summary


class Client:
    """Sends trigger requests and receives their replies; not thread-safe."""

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: BrokerSettings | None = None,
        name: str = "setevnt-client",
        accept_timeout: float = 30.0,
    ) -> None:
        self._broker = Broker(settings or BrokerSettings.from_env(url), name=name)
        self.settings = self._broker.settings
        self.accept_timeout = accept_timeout
        self._replies: defaultdict[str, deque[Message]] = defaultdict(deque)
        self._channel = self._broker.requester(self._received)
        try:
            self._channel.open()
        except BaseException:
            self._broker.close()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._broker.close()

    def trigger(
        self,
        event: str,
        *,
        clients: Sequence[str] = (),
        groups: Sequence[str] = (),
        all: bool = False,
        silent: bool = False,
        force: bool = False,
        ttl: float | None = None,
        rate: float | None = None,
        spread: float | None = None,
        delivery_wait: float | None = None,
        max_errors: int | None = None,
        idempotency_key: str | None = None,
    ) -> Handle:
        """Ask for ``event`` on the targets; returns once the dispatcher accepted.

        Raises :class:`RequestRefused` (with the dispatcher's reason), ValueError for a
        request that could never be valid (checked before sending), :class:`RequestTimeout`
        when no answer came within ``accept_timeout``.
        """
        request = TriggerRequest(
            event=event,
            clients=tuple(clients),
            groups=tuple(groups),
            all=all,
            silent=silent,
            force=force,
            ttl=ttl,
            rate=rate,
            spread=spread,
            delivery_wait=delivery_wait,
            max_errors=max_errors,
            idempotency_key=idempotency_key,
        )
        return self.send(encode(request))

    def send(self, body: bytes, *, user_id: str | None = None) -> Handle:
        """Send an encoded request as it is (what :meth:`trigger` does after encoding).

        ``user_id`` other than this connection's user is refused by the broker (406).
        """
        correlation_id = uuid.uuid4().hex
        self._channel.publish(
            body,
            message_type=TriggerRequest.WIRE_TYPE,
            correlation_id=correlation_id,
            # Not taken by then: dead-lettered rather than run after we stopped waiting.
            expiration_ms=int(self.accept_timeout * 1000),
            user_id=user_id,
        )
        reply = self.await_reply(correlation_id, TriggerReply, self.accept_timeout)
        if not reply.accepted:
            assert reply.reason is not None
            raise RequestRefused(RefusalReason(reply.reason), reply.detail or "")
        return Handle(self, correlation_id, reply)

    def await_reply(self, correlation_id: str, kind: type[M], timeout: float | None) -> M:
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = self._replies[correlation_id]
        while True:
            for message in list(waiting):
                if isinstance(message, kind):
                    waiting.remove(message)
                    return message
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"no {kind.WIRE_TYPE} within {timeout} s")
            self._channel.pump(min(left, 1.0))

    def _received(self, reply: Reply) -> None:
        try:
            message = decode_any(reply.body)
        except DecodeError as exc:
            log.warning("ignoring an undecodable reply: %s", exc)
            return
        if reply.correlation_id is not None:
            self._replies[reply.correlation_id].append(message)
