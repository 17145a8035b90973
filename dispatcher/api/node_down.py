"""Which of a send's unroutable or nacked commands only wait for a cluster node.

While a node is down, a publish to a client queue homed on it comes back unroutable or
nacked, though the queue exists and comes back with the node: such a command is
``waiting-node``, not failed, and the dispatcher service sends it again. One passive
declare per client queue tells the two apart; a send that failed for many clients
probes a bounded number of them (the rest keep their plain outcome).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.queue_probe import QueueState

log = logging.getLogger(__name__)

MAX_PROBES = 200  # client queues probed per send


def waiting_for_node(
    broker: Broker, failed: Mapping[str, str], limit: int = MAX_PROBES
) -> set[str]:
    """The ids among ``failed`` (command id -> client id) whose queue's node is down."""
    clients = sorted(set(failed.values()))[:limit]
    if not clients:
        return set()
    down: set[str] = set()
    try:
        with broker.probe() as probe:
            for client_id in clients:
                if probe.state(topology.client_queue(client_id)).state == QueueState.NODE_DOWN:
                    down.add(client_id)
    except BrokerError as exc:  # the outcomes stand as the broker gave them
        log.warning("cannot tell whether a cluster node is down: %s", exc)
    return {command_id for command_id, client in failed.items() if client in down}
