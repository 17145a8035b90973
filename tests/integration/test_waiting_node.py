"""One-off commands waiting for their queue's cluster node: the service's re-sender.

On one node a queue is never "on a node that is down", so these tests put the
``waiting-node`` rows in the ledger the way the collector does (an ``Issued`` message),
with the queue back (or gone for good), and check what the re-sender publishes. The
whole path with a node really down is in tests/cluster/test_node_kill.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker import topology
from broker.provisioning import provision_clients
from broker.settings import BrokerSettings
from dispatcher.access import keys
from dispatcher.api.dispatcher import Dispatcher
from dispatcher.service.node_resend import NodeResender
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from dispatcher.store.ledger_rows import Status
from dispatcher.store.waiting import NodeWaits
from schemas import Command, decode
from schemas.messages import Issued
from tests.integration.helpers import drain

TTL = 600.0


@pytest.fixture
def database(tmp_path: Path) -> DbSettings:
    return DbSettings(str(tmp_path / "ledger.db"))


def wait_for_node(ledger: Ledger, commands: dict[str, str], ttl: float = TTL) -> float:
    """Rows as the collector records a one-off send that found its queues' node down."""
    now = time.time()
    ledger.record_issued(
        [
            (Issued("cli", "planned", "CCIM32", "STARTCYCLE", now, now + ttl, commands), now),
            (
                Issued(
                    "cli", "waiting-node", "CCIM32", "STARTCYCLE", now, now + ttl, commands,
                    requested_by="ops@console", silent=True, force=True,
                    not_before=now + 30,
                ),
                now,
            ),
        ]
    )  # fmt: skip
    return now


def resender(url: str, database: DbSettings) -> NodeResender:
    return NodeResender(BrokerSettings.from_env(url), database, keys.Signing(None))


def test_a_command_goes_again_unchanged_once_its_queue_answers(
    amqp_url: str, database: DbSettings
) -> None:
    provision_clients(BrokerSettings.from_env(amqp_url), ["PC1", "PC2"])
    with Ledger(database) as ledger, NodeWaits(database) as waits:
        issued_at = wait_for_node(ledger, {"c1": "PC1", "c2": "PC2"})
        assert resender(amqp_url, database).round(waits) == 2
        for command_id, client in (("c1", "PC1"), ("c2", "PC2")):
            [(properties, body)] = drain(amqp_url, topology.client_queue(client))
            command = decode(body, Command)
            assert isinstance(command, Command) and properties.message_id == command_id
            assert (command.command_id, command.client_id) == (command_id, client)
            assert (command.issued_at, command.expires_at) == (issued_at, issued_at + TTL)
            assert (command.requested_by, command.silent, command.force) == (
                "ops@console", True, True,
            )  # fmt: skip
            assert command.not_before == issued_at + 30 and command.storm_id is None
            assert 0 < int(properties.expiration) <= TTL * 1000  # what is left of its TTL
            row = ledger.command(command_id)
            assert row is not None and row.status == Status.SENT and row.sent_at
        assert waits.due(time.time(), 10) == []


def test_two_services_send_each_command_once(amqp_url: str, database: DbSettings) -> None:
    clients = {f"c{n}": f"PC{n}" for n in range(20)}
    provision_clients(BrokerSettings.from_env(amqp_url), list(clients.values()))
    with (
        Ledger(database) as ledger,
        NodeWaits(database) as one,
        NodeWaits(database) as two,
    ):
        wait_for_node(ledger, clients)
        first, second = resender(amqp_url, database), resender(amqp_url, database)
        # The second round finds every command claimed or sent: nothing is left for it.
        sent = first.round(one) + second.round(two)
    assert sent == len(clients)
    for client in clients.values():
        assert len(drain(amqp_url, topology.client_queue(client))) == 1


def test_a_command_whose_service_died_after_claiming_it_goes_after_the_lease(
    amqp_url: str, database: DbSettings
) -> None:
    provision_clients(BrokerSettings.from_env(amqp_url), ["PC1"])
    with Ledger(database) as ledger, NodeWaits(database) as dead:
        wait_for_node(ledger, {"c1": "PC1"})
        assert dead.claim("c1")  # and its service dies before publishing
        with NodeWaits(database) as waits:
            assert resender(amqp_url, database).round(waits) == 0  # within the lease
        assert drain(amqp_url, topology.client_queue("PC1")) == []
        with NodeWaits(database, lease=0.0) as waits:  # the lease has run out
            assert resender(amqp_url, database).round(waits) == 1
        [(properties, body)] = drain(amqp_url, topology.client_queue("PC1"))
        assert properties.message_id == "c1" and decode(body, Command).client_id == "PC1"
        row = ledger.command("c1")
        assert row is not None and row.status == Status.SENT and row.sent_at


def test_a_queue_gone_for_good_fails_its_command(amqp_url: str, database: DbSettings) -> None:
    provision_clients(BrokerSettings.from_env(amqp_url), ["PC1"])
    with Ledger(database) as ledger, NodeWaits(database) as waits:
        wait_for_node(ledger, {"c1": "PC1", "gone": "NOQUEUE"})
        assert resender(amqp_url, database).round(waits) == 1
        assert ledger.command("gone").status == Status.UNROUTABLE  # type: ignore[union-attr]
        assert ledger.command("c1").status == Status.SENT  # type: ignore[union-attr]


def test_an_expired_command_is_never_sent(amqp_url: str, database: DbSettings) -> None:
    provision_clients(BrokerSettings.from_env(amqp_url), ["PC1"])
    with Ledger(database) as ledger, NodeWaits(database) as waits:
        wait_for_node(ledger, {"c1": "PC1"}, ttl=0.5)
        time.sleep(0.6)
        assert resender(amqp_url, database).round(waits) == 0
        assert ledger.command("c1").status == Status.EXPIRED  # type: ignore[union-attr]
    assert drain(amqp_url, topology.client_queue("PC1")) == []


def test_without_a_cluster_an_unroutable_one_off_stays_failed(amqp_url: str) -> None:
    """On one node a missing queue is just missing: the probe does not make it wait."""
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        [receipt] = dispatcher.trigger(["NOQUEUE"], "CCIM32_STARTCYCLE")
    assert receipt.status == "unroutable" and receipt.failed
