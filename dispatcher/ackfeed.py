"""A storm's own copy of the fleet's acks, received on a background thread.

Like :class:`dispatcher.waiter.AckWaiter`, a private exclusive queue is bound to the ack
exchange before anything is published, so the storm sees every ack of its commands while
the durable ack queue still feeds the collector (which records them in the ledger). The
storm drains the received acks between confirms on its publishing thread.

If this connection drops, acks published meanwhile reach only the collector: the storm
then counts those commands ``pending-offline`` after the delivery wait instead of
stalling, and the ledger still gets their real outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from typing import Any

from broker import topology
from broker.connection import close_quietly, open_blocking, translate_errors
from broker.errors import BrokerError
from broker.settings import BrokerSettings
from broker.supervisor import supervise
from schemas.codec import DecodeError, decode
from schemas.messages import Ack

log = logging.getLogger(__name__)

# Above this many clients one wildcard binding is cheaper than a binding per client.
PER_CLIENT_BINDINGS = 100


class AckFeed:
    def __init__(
        self,
        settings: BrokerSettings,
        client_ids: Collection[str],
        trusted_senders: frozenset[str] = frozenset(),
    ) -> None:
        self._settings = settings.named(f"{settings.connection_name} (acks)")
        self._trusted = trusted_senders
        clients = sorted(set(client_ids))
        self._keys = (
            [topology.ack_routing_key(c) for c in clients]
            if len(clients) <= PER_CLIENT_BINDINGS
            else [f"{topology.ACK_KEY}.#"]
        )
        self._acks: deque[tuple[Ack, float]] = deque()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BrokerError | None = None
        self._sessions = 0
        self._thread = threading.Thread(target=self._run, name="storm-acks", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Bind the private queue; raises a BrokerError when that cannot be done."""
        self.begin()
        self.wait_ready(timeout)

    def begin(self) -> None:
        """Start connecting and binding on the feed's thread; see :meth:`wait_ready`."""
        self._thread.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            self.close()
            raise BrokerError("timed out binding the storm's ack queue")
        if self._error is not None:
            self.close()
            raise self._error

    def drain(self) -> list[tuple[Ack, float]]:
        """The acks received since the last call, with when each arrived (wall clock)."""
        acks = []
        while self._acks:
            acks.append(self._acks.popleft())
        return acks

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> AckFeed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            # Back quickly after a broker restart: acks missed meanwhile cost a delivery wait.
            supervise(self._session, self._stop.is_set, what="storm ack feed", max_delay=5.0)
        except BrokerError as exc:
            self._error = exc
        finally:
            self._ready.set()  # never leave start() waiting

    def _session(self) -> None:
        connection = open_blocking(self._settings)
        try:
            with translate_errors("receiving the storm's acks"):
                channel = connection.channel()
                topology.declare_core(channel)
                declared = channel.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.method.queue
                for key in self._keys:
                    channel.queue_bind(queue, topology.ACK_EXCHANGE, routing_key=key)
                channel.basic_consume(queue, self._on_message, auto_ack=True)
                self._sessions += 1
                if self._sessions > 1:
                    log.warning("storm ack feed reconnected: acks sent meanwhile were missed")
                self._ready.set()
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.1)
        finally:
            close_quietly(connection)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            ack = decode(body, Ack)
        except DecodeError:
            return  # the collector counts bad messages; a storm only wants its acks
        # As the collector: an ack counts only from its client's own broker user (the
        # broker checks user_id) or a trusted sender, never from whoever can publish.
        sender = properties.user_id
        if sender is None or (sender != ack.client_id and sender not in self._trusted):
            return
        self._acks.append((ack, time.time()))
