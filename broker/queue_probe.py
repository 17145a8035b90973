"""Is a queue there, missing, or on a cluster node that is down?

A publish to a classic queue whose home node is down comes back unroutable (or nacked),
exactly like a publish to a queue that does not exist. A passive declare tells them
apart: RabbitMQ answers ``404 NOT_FOUND - home node '...' of queue '...' is down or
inaccessible`` for the first, a plain 404 for the second. The probe has a connection of
its own (a refused declare closes its channel, never the publisher's) and moves to
another node when its own goes away.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pika.exceptions as pe

from broker.connection import close_quietly, open_blocking, translate
from broker.errors import ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

_HOME_NODE = re.compile(r"home node '([^']+)'")


class QueueState(StrEnum):
    PRESENT = "present"
    MISSING = "missing"
    NODE_DOWN = "node-down"  # the queue exists; its home node is down or unreachable


@dataclass(frozen=True, slots=True)
class Probed:
    state: QueueState
    node: str | None = None  # the home node that is down, as the broker names it


def classify_not_found(reply_text: str) -> Probed:
    """A 404's text: a queue whose home node is down, or no such queue."""
    found = _HOME_NODE.search(reply_text)
    if found is not None or "is down or inaccessible" in reply_text:
        return Probed(QueueState.NODE_DOWN, found.group(1) if found else None)
    return Probed(QueueState.MISSING)


class QueueProbe:
    """Passive declares on a connection of its own; not thread-safe."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._settings = settings.named(f"{settings.connection_name} (probe)")
        self._connection: Any = None
        self._channel: Any = None

    def state(self, queue: str) -> Probed:
        """Raises :class:`ConnectionLost` when no node answers (twice)."""
        try:
            return self._ask(queue)
        except ConnectionLost as exc:
            log.info("queue probe reconnecting: %s", exc)
            self.close()
            return self._ask(queue)

    def close(self) -> None:
        close_quietly(self._connection)
        self._connection = self._channel = None

    def __enter__(self) -> QueueProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, queue: str) -> Probed:
        channel = self._open_channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pe.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 404:
                return classify_not_found(exc.reply_text)
            raise translate(exc, f"probing {queue}") from exc
        except (pe.AMQPError, OSError) as exc:
            raise translate(exc, f"probing {queue}") from exc
        return Probed(QueueState.PRESENT)

    def _open_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self.close()
            self._connection = open_blocking(self._settings)
        if self._channel is None or not self._channel.is_open:
            try:
                self._channel = self._connection.channel()
            except (pe.AMQPError, OSError) as exc:
                raise translate(exc, "opening a probe channel") from exc
        return self._channel
