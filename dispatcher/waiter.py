"""Wait for the acks of commands just sent, without taking them from the collector.

A private, exclusive queue is bound to the ack exchange for the target clients before
anything is published, so the waiter gets its own copy of each ack while the durable ack
queue still feeds the collector. An ack counts only when it answers one of the commands
waited for, names that command's client, and was sent by that client's broker user (or a
trusted one, as the collector decides): anything else in the queue is ignored, and
nothing but the awaited commands' answers is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker import topology
from broker.connection import close_quietly, open_blocking, translate_errors
from broker.settings import BrokerSettings
from dispatcher.senders import Senders
from schemas.codec import DecodeError, decode
from schemas.messages import Ack

# Above this many clients one wildcard binding is cheaper than a binding per client.
_PER_CLIENT_BINDINGS = 100


@dataclass(frozen=True, slots=True)
class Answer:
    ack: Ack
    latency: float | None  # dispatcher clock: issued_at -> ack received here


class AckWaiter:
    def __init__(
        self,
        settings: BrokerSettings,
        client_ids: Iterable[str],
        *,
        senders: Senders | None = None,
    ) -> None:
        clients = sorted(set(client_ids))
        self._senders = senders or Senders.from_env(settings.username)
        self._connection = open_blocking(settings.named("setevnt-cli"))
        self._wanted: dict[str, str] = {}  # command id -> its client
        self._issued: dict[str, float] = {}
        self._answers: dict[str, Answer] = {}
        self._latest: dict[str, Answer] = {}
        with translate_errors("preparing to wait for acks"):
            self._channel = self._connection.channel()
            topology.declare_core(self._channel)
            declared = self._channel.queue_declare("", exclusive=True, auto_delete=True)
            self._queue = declared.method.queue
            keys = (
                [topology.ack_routing_key(c) for c in clients]
                if len(clients) <= _PER_CLIENT_BINDINGS
                else [f"{topology.ACK_KEY}.#"]
            )
            for key in keys:
                self._channel.queue_bind(self._queue, topology.ACK_EXCHANGE, routing_key=key)

    def close(self) -> None:
        close_quietly(self._connection)

    def __enter__(self) -> AckWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(
        self,
        commands: Mapping[str, str],
        timeout: float,
        issued_at: Mapping[str, float] | None = None,
    ) -> dict[str, Answer]:
        """Final answers by command id, for ``commands`` (command id -> client id); interim
        ones (deferred) are in :attr:`latest`. ``issued_at`` (by command id) measures the
        latency on this side's clock instead of the ack's echo of it."""
        self._wanted.update(commands)
        self._issued.update(issued_at or {})
        wanted = set(commands)
        deadline = time.monotonic() + timeout
        with translate_errors("waiting for acks"):
            self._channel.basic_consume(self._queue, self._on_message, auto_ack=True)
            while not wanted <= self._answers.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._connection.process_data_events(time_limit=min(left, 0.25))
        return {cid: self._answers[cid] for cid in wanted if cid in self._answers}

    @property
    def latest(self) -> dict[str, Answer]:
        return dict(self._latest)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            ack = decode(body, Ack)
        except DecodeError:
            return  # the collector counts bad messages; a waiter only wants its acks
        if self._wanted.get(ack.command_id) != ack.client_id:
            return  # not a command waited for, or it claims another client's command
        if self._senders.not_for(ack.client_id, getattr(properties, "user_id", None)):
            return  # the collector drops and counts it; here it is simply not believed
        issued = self._issued.get(ack.command_id, ack.issued_at)
        latency = max(0.0, time.time() - issued) if issued is not None else None
        answer = Answer(ack, latency)
        self._latest[ack.command_id] = answer
        if ack.final:
            self._answers.setdefault(ack.command_id, answer)
