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

from broker import topology
from broker.broker import Broker
from broker.session import Incoming
from broker.settings import BrokerSettings
from dispatcher.service.senders import Senders
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
        self._broker = Broker(settings, name="setevnt-cli")
        self._consumer = self._broker.consumer()
        self._consumer.open("preparing to wait for acks")
        self._consuming = False
        self._wanted: dict[str, str] = {}  # command id -> its client
        self._issued: dict[str, float] = {}
        self._answers: dict[str, Answer] = {}
        self._latest: dict[str, Answer] = {}
        keys = (
            [topology.ack_routing_key(c) for c in clients]
            if len(clients) <= _PER_CLIENT_BINDINGS
            else [f"{topology.ACK_KEY}.#"]
        )
        try:
            self._queue = self._consumer.private_queue(topology.ACK_EXCHANGE, keys)
        except BaseException:
            self._broker.close()
            raise

    def close(self) -> None:
        self._broker.close()

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
        if not self._consuming:
            self._consumer.consume(self._queue, self._on_message, auto_ack=True)
            self._consuming = True
        while not wanted <= self._answers.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._consumer.pump(min(left, 0.25), "waiting for acks")
        return {cid: self._answers[cid] for cid in wanted if cid in self._answers}

    @property
    def latest(self) -> dict[str, Answer]:
        return dict(self._latest)

    def _on_message(self, message: Incoming) -> None:
        try:
            ack = decode(message.body, Ack)
        except DecodeError:
            return  # the collector counts bad messages; a waiter only wants its acks
        if self._wanted.get(ack.command_id) != ack.client_id:
            return  # not a command waited for, or it claims another client's command
        if self._senders.not_for(ack.client_id, message.user_id):
            return  # the collector drops and counts it; here it is simply not believed
        issued = self._issued.get(ack.command_id, ack.issued_at)
        latency = max(0.0, time.time() - issued) if issued is not None else None
        answer = Answer(ack, latency)
        self._latest[ack.command_id] = answer
        if ack.final:
            self._answers.setdefault(ack.command_id, answer)
