"""Commands whose client's queue is on a cluster node that is down: ``waiting-node``.

While a node is down, a publish to a client queue homed on it comes back unroutable or
nacked, though the queue exists and comes back with the node. Such a command is not
failed: it is parked, by the node that is down, and goes out again (same id, same
expiry) once a probe finds its node's queues again; a command whose time to live ran out
meanwhile is ``expired``. One probe per down node per recheck, not one per command.
Runs on the storm's publishing thread, like the flow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from broker import topology
from broker.errors import BrokerError
from broker.publisher import Outcome
from broker.queue_probe import Probed, QueueState

log = logging.getLogger(__name__)

RECHECK_EVERY = 1.0  # seconds between probes of a down node


class Prober(Protocol):
    def state(self, queue: str) -> Probed: ...


class Parked(Protocol):
    client_id: str
    expires_at: float


T = TypeVar("T", bound=Parked)


class NodeWait(Generic[T]):
    def __init__(self, prober: Prober, *, recheck_every: float = RECHECK_EVERY) -> None:
        self._prober = prober
        self._recheck_every = recheck_every
        self._by_node: dict[str, list[T]] = {}
        self._next_check = 0.0
        self.parked = 0  # commands ever parked, for the storm's figures

    def __len__(self) -> int:
        return sum(len(targets) for targets in self._by_node.values())

    def park(self, target: T, outcome: Outcome) -> bool:
        """Park ``target`` when its publish failed because its queue's node is down."""
        if outcome not in (Outcome.UNROUTABLE, Outcome.NACKED):
            return False
        try:
            probed = self._prober.state(topology.client_queue(target.client_id))
        except BrokerError as exc:
            log.warning("cannot tell why %s was %s: %s", target.client_id, outcome, exc)
            return False
        # Unroutable though the queue is there: its node came back in between.
        back = probed.state is QueueState.PRESENT and outcome is Outcome.UNROUTABLE
        if probed.state is not QueueState.NODE_DOWN and not back:
            return False
        self._by_node.setdefault(probed.node or "", []).append(target)
        self.parked += 1
        return True

    def recheck(self, release: Callable[[T], None], expire: Callable[[T], None]) -> None:
        """Expire what is past its expiry; ``release`` every command of a node that is back."""
        now = time.monotonic()
        if not self._by_node or now < self._next_check:
            return
        self._next_check = now + self._recheck_every
        wall = time.time()
        for node in list(self._by_node):
            targets = self._by_node[node]
            for target in [t for t in targets if t.expires_at <= wall]:
                targets.remove(target)
                expire(target)
            if targets and self._back(targets[0]):
                for target in targets:
                    release(target)
                targets.clear()
            if not targets:
                del self._by_node[node]

    def _back(self, target: T) -> bool:
        try:
            probed = self._prober.state(topology.client_queue(target.client_id))
        except BrokerError as exc:
            log.info("probing %s: %s", target.client_id, exc)
            return False
        return probed.state is not QueueState.NODE_DOWN
