"""The service's thread that sends one-off ``waiting-node`` commands again.

A one-off trigger whose client's queue was on a cluster node that was down left its
command ``waiting-node`` in the ledger (:mod:`dispatcher.store.waiting`). Every round
this thread expires those whose time to live ran out, probes the queues of the others
(one passive declare per queue, a bounded number a round), and publishes again, with the
same id and expiry, each command whose queue answers, after claiming it in the database.
A queue that is gone for good makes its command ``unroutable``; one whose node is still
down waits for the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.publisher import Outcome, Outgoing
from broker.queue_probe import QueueState
from broker.settings import BrokerSettings
from dispatcher.access import keys
from dispatcher.api.dispatcher import command_message
from dispatcher.store.db import DbSettings, StoreError
from dispatcher.store.ledger_rows import SentCommand, Status
from dispatcher.store.waiting import NodeWaits
from schemas.codec import encode

log = logging.getLogger(__name__)

ROUND_EVERY = 2.0  # seconds between rounds
BATCH = 500  # waiting commands looked at per round
MAX_PROBES = 100  # client queues probed per round


class ResendHooks(Protocol):
    def waiting_node_settled(self, result: str, count: int) -> None: ...


class NodeResender:
    """Runs rounds until :meth:`stop`; a round that meets a broker or database error logs
    it and the next one tries again."""

    def __init__(
        self,
        settings: BrokerSettings,
        database: DbSettings,
        signing: keys.Signing | None = None,
        *,
        hooks: ResendHooks | None = None,
        every: float = ROUND_EVERY,
    ) -> None:
        self._broker = Broker(settings, name="setevnt-node-resend")
        self._database = database
        self._stamp = (signing or keys.Signing.from_env()).stamp()
        self._every = every
        self._hooks = hooks
        self._stopping = threading.Event()

    def run(self) -> None:
        with self._broker, NodeWaits(self._database) as waits:
            while not self._stopping.wait(self._every):
                try:
                    self.round(waits)
                except (BrokerError, StoreError) as exc:
                    log.warning("waiting-node re-send round failed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()

    def round(self, waits: NodeWaits) -> int:
        """One round; returns how many commands the broker confirmed."""
        now = time.time()
        expired = waits.expire(now)
        if expired:
            log.info("%d waiting-node command(s) expired before they could be sent again", expired)
            self._count(Status.EXPIRED, expired)
        due = waits.due(now, BATCH)
        if not due:
            return 0
        ready = self._ready(waits, due)
        if not ready:
            return 0
        sent = self._send(waits, ready)
        log.info("waiting-node: re-sent %d of %d command(s) whose node is back", sent, len(ready))
        return sent

    def _ready(self, waits: NodeWaits, due: Sequence[SentCommand]) -> list[SentCommand]:
        """The commands whose queue answers, claimed; those whose queue is gone settle."""
        states: dict[str, QueueState] = {}
        with self._broker.probe() as probe:
            for client_id in dict.fromkeys(c.client_id for c in due):
                if len(states) == MAX_PROBES:
                    break
                states[client_id] = probe.state(topology.client_queue(client_id)).state
        ready = []
        for command in due:
            state = states.get(command.client_id, QueueState.NODE_DOWN)
            if state == QueueState.NODE_DOWN or not waits.claim(command.command_id):
                continue
            if state == QueueState.MISSING:
                waits.settle(command.command_id, Status.UNROUTABLE, None)
                self._count(Status.UNROUTABLE, 1)
            else:
                ready.append(command)
        return ready

    def _send(self, waits: NodeWaits, ready: Sequence[SentCommand]) -> int:
        now = time.time()
        messages = [_message(command, now) for command in ready]
        try:
            with self._broker.publisher(stamp=self._stamp) as publisher:
                outcomes = publisher.publish(messages)
        except BrokerError:
            for command in ready:  # not published: it waits for the next round
                waits.settle(command.command_id, Status.WAITING_NODE, None)
            raise
        sent_at = time.time()
        for command in ready:
            outcome = outcomes[command.command_id]
            if outcome == Outcome.SENT:
                waits.settle(command.command_id, Status.SENT, sent_at)
            else:  # its node went down again in between: the next round probes it
                waits.settle(command.command_id, Status.WAITING_NODE, None)
        sent = sum(1 for outcome in outcomes.values() if outcome == Outcome.SENT)
        self._count(Status.SENT, sent)
        return sent

    def _count(self, result: Status, count: int) -> None:
        if self._hooks is not None and count:
            self._hooks.waiting_node_settled(result.value, count)


def _message(command: SentCommand, now: float) -> Outgoing:
    body = encode(command.command())
    # Expiring when the command does, not a full time to live from now.
    remaining = command.expires_at - now
    return command_message(command.command_id, command.client_id, body, remaining)
