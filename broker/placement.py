"""Spreading client queues over the nodes of a cluster.

RabbitMQ homes a classic queue on the node of the connection that declares it, so one
provisioning dispatcher would home the whole fleet on one node, and that node's loss
would cut off every client. On a cluster the placement policy of :mod:`broker.topology`
homes each new client queue on the node with the fewest queues instead. Policies live
in the management API; a broker user without the ``policymaker`` tag cannot set one, and
then queues still work, only unbalanced, so that is a warning rather than an error.
"""

from __future__ import annotations

import logging
from typing import Any

from broker import topology
from broker.errors import BrokerError, ConnectionLost
from broker.management import Management, q
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)


def policy_body() -> dict[str, Any]:
    return {
        "pattern": topology.PLACEMENT_PATTERN,
        "apply-to": "queues",
        "priority": 0,
        "definition": topology.PLACEMENT_DEFINITION,
    }


def ensure_placement(settings: BrokerSettings, management_url: str | None = None) -> bool:
    """Set the placement policy on a cluster's virtual host when it is missing or
    different; True when it is in place (always False off a cluster)."""
    if not settings.cluster:
        return False
    path = f"/policies/{q(settings.vhost)}/{q(topology.PLACEMENT_POLICY)}"
    try:
        api = _reachable(settings, management_url)
        current = _current(api, path)
        if current is None or any(current.get(k) != v for k, v in policy_body().items()):
            api.call("PUT", path, policy_body())
    except BrokerError as exc:
        log.warning(
            "cannot set the client queue placement policy (%s): new client queues "
            "are homed on the node that declares them",
            exc,
        )
        return False
    return True


def _current(api: Management, path: str) -> dict[str, Any] | None:
    from broker.management import NotFound

    try:
        found = api.call("GET", path)
    except NotFound:
        return None
    return found if isinstance(found, dict) else None


def _reachable(settings: BrokerSettings, management_url: str | None) -> Management:
    """The management API of the first node that answers."""
    candidates = [Management.for_broker(settings, management_url)]
    if management_url is None:
        candidates += [Management.for_broker(settings.node(url)) for url in settings.urls[1:]]
    error: BrokerError = ConnectionLost("no broker node to ask")
    for api in candidates:
        try:
            api.call("GET", "/overview")
            return api
        except ConnectionLost as exc:
            error = exc
    raise error
