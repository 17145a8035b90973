"""A service user's connection that publishes raw requests and collects every reply.

Unlike :class:`dispatcher.Client` it sends any bytes and any ``reply_to``, never waits
for one answer before the next request, and keeps every reply by correlation id, so a
batch can say how each request was answered and what the accepted ones may add.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions

from broker import topology
from schemas.codec import DecodeError, decode_any
from schemas.messages import Message, TriggerReply
from tests.hostile.observe import Allowance
from tests.hostile.site import Sent
from tests.hostile.wire import new_id


class Requests:
    def __init__(self, url: str, user: str) -> None:
        self.user = user
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self.replies: dict[str, list[Message | None]] = {}
        self._open()

    def _open(self) -> None:
        self._channel = self._connection.channel()
        # Direct reply-to: consumed (no-ack) on the channel that publishes.
        self._channel.basic_consume(topology.DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        self._channel.confirm_delivery()

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._connection.close()

    def __enter__(self) -> Requests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self, kind: str, bodies: Iterable[bytes], *, reply_to: str = topology.DIRECT_REPLY_TO
    ) -> tuple[Sent, list[str]]:
        """Publish each body as a request; the correlation ids it was sent with."""
        ids: list[str] = []
        confirmed = refused = 0
        for body in bodies:
            correlation_id = new_id()
            ids.append(correlation_id)
            properties = pika.BasicProperties(
                user_id=self.user,
                reply_to=reply_to,
                correlation_id=correlation_id,
                delivery_mode=2,
                type="trigger-request",
            )
            try:
                self._channel.basic_publish(topology.REQUEST_EXCHANGE, "", body, properties)
                confirmed += 1
            except pika.exceptions.NackError:
                refused += 1
            except pika.exceptions.ChannelClosedByBroker:
                refused += 1
                self._open()
        return Sent(f"service {self.user}", kind, len(ids), confirmed, refused), ids

    def wait(self, ids: Iterable[str], timeout: float) -> list[str]:
        """Pump replies until each of ``ids`` has one or time is up; those still missing."""
        wanted = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = [i for i in wanted if not self.replies.get(i)]
            if not missing or time.monotonic() > deadline:
                return missing
            self._connection.process_data_events(time_limit=0.2)

    def unanswered(self, ids: list[str]) -> list[str]:
        """Every request that named a reply queue is answered: the problem if not (call
        after :meth:`accepted`, which waits for replies in flight)."""
        missing = self.wait(ids, 0)
        return [f"no reply to {len(missing)} of {len(ids)} requests"] if missing else []

    def summary(self, ids: list[str]) -> str:
        outcomes = self.outcomes(ids)
        return "replies: " + ", ".join(f"{what} {n}" for what, n in sorted(outcomes.items()))

    def first(self, correlation_id: str) -> Message | None:
        replies = self.replies.get(correlation_id) or [None]
        return replies[0]

    def outcomes(self, ids: Iterable[str]) -> Counter[str]:
        """How the requests were answered: accepted, replayed, refused REASON, none."""
        counted: Counter[str] = Counter()
        for correlation_id in ids:
            reply = self.first(correlation_id)
            if not isinstance(reply, TriggerReply):
                counted["no reply" if correlation_id not in self.replies else "bad reply"] += 1
            elif reply.accepted:
                counted["replayed" if reply.replayed else "accepted"] += 1
            else:
                counted[f"refused {reply.reason}"] += 1
        return counted

    def accepted(self, ids: Iterable[str], wait: float) -> Allowance:
        """What the accepted requests among ``ids`` may add: their storms, their commands
        (after waiting up to ``wait`` seconds for the replies still in flight)."""
        wanted = list(ids)
        self.wait(wanted, wait)
        total = Allowance()
        for correlation_id in wanted:
            reply = self.first(correlation_id)
            if isinstance(reply, TriggerReply) and reply.accepted and not reply.replayed:
                targets = reply.targets or 0
                total += Allowance(commands=targets, storms=1, published=targets)
        return total

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            message: Message | None = decode_any(body)
        except DecodeError:
            message = None
        key = properties.correlation_id or ""
        self.replies.setdefault(key, []).append(message)
