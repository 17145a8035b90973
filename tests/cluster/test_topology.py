"""On a private 3-node cluster: connections fail over, client queues are spread over the
nodes, the shared queues are quorum queues, and a single node's classic shared queues
move to quorum queues with their messages."""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pika
import pytest

from bench.cluster import Cluster, management
from broker import topology
from broker.connection import close_quietly, open_blocking
from broker.errors import BrokerRefused
from broker.migration import move_to_quorum
from broker.provisioning import provision_clients
from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from tests.cluster.conftest import vhost_url
from tests.integration.helpers import records, start_agent, wait_for

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
    # min-masters counts the queues each node homes when a declare arrives; declares in
    # flight on parallel channels see the same counts, so the spread is even, not exact.
    assert min(homes.values()) >= len(ids) // 5, homes


def test_shared_queues_are_quorum_queues_on_a_cluster(cluster: Cluster, cluster_vhost: str) -> None:
    settings = BrokerSettings.from_env(vhost_url(cluster, cluster_vhost))
    topology.declare_all(settings)
    topology.declare_all(settings)  # idempotent
    types = {str(q["name"]): q["type"] for q in queues(cluster, cluster_vhost)}
    assert types == {name: "quorum" for name in topology.shared_queues()}


def test_a_single_node_deployments_classic_shared_queues_move_to_quorum(
    cluster: Cluster, cluster_vhost: str
) -> None:
    """What a deployment that grows from one node to a cluster runs once
    (``setevnt-dispatcher move-to-quorum``): every message stays, with its properties."""
    url = vhost_url(cluster, cluster_vhost)
    single = BrokerSettings.from_env(url, cluster_flag=False)
    topology.declare_all(single)  # the classic queues of a single-node deployment
    waiting = {
        topology.ACK_QUEUE: (topology.ACK_EXCHANGE, topology.ack_routing_key("PC1"), 3),
        topology.FLEET_QUEUE: (topology.ACK_EXCHANGE, topology.hello_routing_key("PC1"), 2),
        topology.REQUEST_QUEUE: (topology.REQUEST_EXCHANGE, "", 1),
        topology.DEAD_QUEUE: (topology.DEAD_EXCHANGE, "", 0),
    }
    connection = open_blocking(single)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for queue, (exchange, key, count) in waiting.items():
            for n in range(count):
                properties = pika.BasicProperties(
                    message_id=f"{queue}-{n}", user_id="guest", headers={"h": n}, delivery_mode=2
                )
                channel.basic_publish(exchange, key, b"body", properties, mandatory=True)
    finally:
        close_quietly(connection)
    clustered = BrokerSettings.from_env(url)
    with pytest.raises(BrokerRefused, match="x-queue-type"):
        topology.declare_all(clustered)  # why the move is needed
    moved = move_to_quorum(clustered)
    assert moved == {queue: count for queue, (_e, _k, count) in waiting.items()}
    assert move_to_quorum(clustered) == {}, "a second run finds quorum queues only"
    topology.declare_all(clustered)
    listed = {str(q["name"]): q for q in queues(cluster, cluster_vhost)}
    assert {name: q["type"] for name, q in listed.items()} == dict.fromkeys(waiting, "quorum")
    connection = open_blocking(clustered)
    try:
        channel = connection.channel()
        _method, properties, body = channel.basic_get(topology.ACK_QUEUE, auto_ack=True)
        assert (properties.message_id, properties.user_id, body) == (
            "setevnt.acks-0",
            "guest",
            b"body",
        )
        # A quorum queue counts deliveries in x-delivery-count; the sender's headers stay.
        assert properties.headers == {"h": 0, "x-delivery-count": 0}
        for queue, (_e, _k, count) in waiting.items():
            depth = channel.queue_declare(queue, passive=True).method.message_count
            assert depth == count - (queue == topology.ACK_QUEUE)
        # Still routed: an ack published now reaches the quorum queue.
        channel.basic_publish(topology.ACK_EXCHANGE, topology.ack_routing_key("PC2"), b"new")
        wait_for(
            lambda: (
                channel.queue_declare(topology.ACK_QUEUE, passive=True).method.message_count == 3
            ),
            10,
            "the new ack in the quorum queue",
        )
    finally:
        close_quietly(connection)


def test_an_agent_whose_queues_node_dies_consumes_again_when_it_is_back(
    cluster: Cluster, cluster_vhost: str, tmp_path: Path
) -> None:
    """SIGKILL the node that homes the agent's queue: the agent's consumer goes with it,
    consuming answers `404 home node ... is down` while it is away, and the agent keeps
    reconnecting (to the other nodes) until the queue is back, then runs what comes."""
    url = vhost_url(cluster, cluster_vhost)
    victim = cluster.nodes[2]
    client = "AGENT1"
    settings = BrokerSettings.from_env(url)
    home = settings.node(settings.urls[2])  # vhost_url lists the nodes in order
    connection = open_blocking(home)  # declared through the victim: homed on it
    try:
        topology.declare_core(connection.channel(), quorum=True)
        topology.declare_client(connection.channel(), client)
    finally:
        close_quietly(connection)
    homed = {str(q["name"]): q.get("node") for q in queues(cluster, cluster_vhost)}
    assert homed[topology.client_queue(client)] == victim.name
    agent = start_agent(url, client, tmp_path)
    consuming = f"agent {client} consuming {topology.client_queue(client)}"
    try:
        with Dispatcher(url) as dispatcher:
            before = dispatcher.trigger([client], "CCIM32_STARTCYCLE")[0].command_id
        wait_for(lambda: finished(tmp_path, client, before), 30, "the first command's run")
        cluster.kill(victim)
        time.sleep(5)
        assert agent.proc.poll() is None, "the agent waits for its queue's node"
        seen = sum(consuming in line for line in agent.lines)
        cluster.start(victim)
        wait_for(
            lambda: sum(consuming in line for line in agent.lines) > seen,
            90,
            "the agent consuming its queue again",
        )
        with Dispatcher(url) as dispatcher:
            after = dispatcher.trigger([client], "CCIM32_STARTCYCLE")[0].command_id
        wait_for(lambda: finished(tmp_path, client, after), 30, "the command after the return")
    finally:
        agent.terminate()
    assert any("home node" in line for line in agent.lines), agent.output[-2000:]


def finished(tmp: Path, client: str, command_id: str) -> bool:
    return any(
        r["phase"] == "finish" and r["command_id"] == command_id
        for r in records(tmp / f"{client}.record")
    )
