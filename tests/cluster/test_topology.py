"""On a private 3-node cluster: connections fail over, client queues are spread over the
nodes, the shared queues are quorum queues."""

from __future__ import annotations

import urllib.parse
from collections import Counter

import pytest

from broker import topology
from broker.connection import close_quietly, open_blocking
from broker.provisioning import provision_clients
from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from tests.cluster.conftest import vhost_url
from tests.cluster.nodes import Cluster, management

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def queues(cluster: Cluster, vhost: str) -> list[dict[str, object]]:
    quoted = urllib.parse.quote(vhost, safe="")
    found = management(cluster.running(), "GET", f"/queues/{quoted}")
    assert isinstance(found, list)
    return found


def test_connections_fail_over_when_the_first_node_is_down(
    cluster: Cluster, cluster_vhost: str
) -> None:
    """Node 0's listener is gone (its app stopped): every connection, blocking or the
    publisher's, still opens on another node, whatever node it would start with."""
    settings = BrokerSettings.from_env(vhost_url(cluster, cluster_vhost))
    down = cluster.nodes[0]
    cluster.ctl(down, "stop_app")
    try:
        for _ in range(len(cluster.nodes)):  # every starting node in the rotation
            connection = open_blocking(settings)
            try:
                assert connection.is_open
            finally:
                close_quietly(connection)
        topology.declare_all(settings)
        message = Outgoing("m1", "", topology.FLEET_QUEUE, b"x", "test")
        for _ in range(len(cluster.nodes)):
            with ConfirmingPublisher(settings, window=10) as publisher:
                assert publisher.publish([message]) == {"m1": Outcome.SENT}
    finally:
        cluster.ctl(down, "start_app")


def test_client_queues_are_spread_over_the_nodes(
    cluster: Cluster, cluster_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SETEVNT_MANAGEMENT_URL", cluster.nodes[0].management_url)
    settings = BrokerSettings.from_env(vhost_url(cluster, cluster_vhost))
    ids = [f"spread-{n:03d}" for n in range(60)]
    provision_clients(settings, ids)
    homes = Counter(
        q["node"]
        for q in queues(cluster, cluster_vhost)
        if str(q["name"]).startswith(topology.CLIENT_QUEUE_PREFIX)
    )
    assert sum(homes.values()) == len(ids)
    assert set(homes) == {node.name for node in cluster.nodes}
    assert max(homes.values()) - min(homes.values()) <= 3, homes


def test_shared_queues_are_quorum_queues_on_a_cluster(cluster: Cluster, cluster_vhost: str) -> None:
    settings = BrokerSettings.from_env(vhost_url(cluster, cluster_vhost))
    topology.declare_all(settings)
    topology.declare_all(settings)  # idempotent
    types = {str(q["name"]): q["type"] for q in queues(cluster, cluster_vhost)}
    assert types == {name: "quorum" for name in topology.shared_queues()}
