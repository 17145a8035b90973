"""Least privilege, enforced by the broker: what an enrolled agent can and cannot do.

Broker users are broker-wide, so each test's users carry a unique prefix and are deleted
in ``finally``; everything else lives in the test's own vhost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from broker import topology
from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.access.enroll import enroll, revoke
from dispatcher.service.senders import Senders
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import StoreRegistry
from schemas import Heartbeat, encode
from tests.integration.collecting import collecting
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def two_clients(amqp_url: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    prefix = f"acl-{uuid.uuid4().hex[:8]}"
    a, b = f"{prefix}-A", f"{prefix}-B"
    settings = BrokerSettings(url=amqp_url)
    management = Management.for_broker(settings)
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([a, b])
    urls = {}
    try:
        for client in (a, b):
            urls[client] = enroll(settings, management, client).agent_url
        yield a, b, urls
    finally:
        for client in (a, b):
            if management.user_exists(client):
                management.delete_user(client)


def _as(url: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _refused(url: str, attempt: Callable[[Any], Any]) -> int:
    """Run ``attempt`` on a fresh channel as that user; return the broker's reply code."""
    connection, channel = _as(url)
    try:
        attempt(channel)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()
    return 200


def _ack(routing_client: str, user_id: str | None = None) -> Callable[[Any], Any]:
    properties = pika.BasicProperties(user_id=user_id, delivery_mode=2)
    return lambda ch: ch.basic_publish(
        topology.ACK_EXCHANGE, topology.ack_routing_key(routing_client), b"x", properties
    )


def test_agent_acl_matrix(two_clients: tuple[str, str, dict[str, str]]) -> None:
    a, b, urls = two_clients
    url = urls[a]
    refused = {
        "consume B's queue": _refused(
            url, lambda ch: ch.basic_consume(topology.client_queue(b), lambda *x: None)
        ),
        "get from B's queue": _refused(url, lambda ch: ch.basic_get(topology.client_queue(b))),
        "publish to the default exchange (command path)": _refused(
            url, lambda ch: ch.basic_publish("", topology.client_queue(a), b"x")
        ),
        "declare a queue": _refused(url, lambda ch: ch.queue_declare("mine")),
        "declare an exchange": _refused(url, lambda ch: ch.exchange_declare("mine")),
        "bind its queue to the ack exchange": _refused(
            url,
            lambda ch: ch.queue_bind(topology.client_queue(a), topology.ACK_EXCHANGE, "ack.#"),
        ),
        "publish an ack as B (routing key)": _refused(url, _ack(b, user_id=a)),
        "publish an ack claiming user_id B": _refused(url, _ack(a, user_id=b)),
    }
    print("\nACL matrix (agent A):")
    for attempt, code in refused.items():
        print(f"  {attempt:<48} {code}")
    assert {k: v for k, v in refused.items() if "user_id" not in k} == {
        k: 403 for k in refused if "user_id" not in k
    }
    # user_id is validated against the connection's user: a mismatch is a precondition.
    assert refused["publish an ack claiming user_id B"] == 406

    # And what an agent must be able to do still works.
    assert _refused(url, _ack(a, user_id=a)) == 200
    assert (
        _refused(
            url,
            lambda ch: ch.basic_publish(
                topology.ACK_EXCHANGE,
                topology.hello_routing_key(a),
                b"x",
                pika.BasicProperties(user_id=a),
            ),
        )
        == 200
    )
    assert _refused(url, lambda ch: ch.basic_get(topology.client_queue(a))) == 200


def test_revoke_deletes_the_user_and_closes_its_connections(
    amqp_url: str, two_clients: tuple[str, str, dict[str, str]]
) -> None:
    a, _b, urls = two_clients
    management = Management.for_broker(BrokerSettings(url=amqp_url))
    connection, _channel = _as(urls[a])
    try:
        wait_for(lambda: management.user_connections(a), 20, "A's connection listed")
        revoke(management, a)
        assert not management.user_exists(a)
        wait_for(lambda: _closed(connection), 15, "A's connection closed by the broker")
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(urls[a]))
    finally:
        if connection.is_open:
            connection.close()


def _closed(connection: pika.BlockingConnection) -> bool:
    try:
        connection.process_data_events(time_limit=0.1)
    except pika.exceptions.AMQPConnectionError:
        return True
    return connection.is_closed


def test_collector_counts_only_acks_sent_by_their_own_client_for_their_own_command(
    amqp_url: str, two_clients: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    """An enrolled agent can publish on its own routing key only; the body could still
    claim another client, leave user_id out, or answer a command that is not its own or
    does not exist. The collector counts only the genuine answer, drops and counts the
    rest, and no ack adds a row to the ledger."""
    from schemas import Ack
    from schemas.messages import Issued

    a, b, urls = two_clients
    with collecting(amqp_url, tmp_path, Senders(dispatchers=frozenset({"guest"}))) as running:
        now = time.time()
        commands = {"genuine": a, "for-b": b}
        with Ledger(running.database) as ledger:
            for status in ("planned", "sent"):  # as a dispatcher reports a send
                issued = Issued("t", status, "CCIM32", "STARTCYCLE", now, now + 60, commands)
                ledger.record_issued([(issued, now)])
            rows_before = _rows(ledger)

        def ack(client: str, command_id: str) -> bytes:
            return encode(
                Ack(
                    command_id,
                    client,
                    "done",
                    time.time(),
                    "test",
                    component="CLISVCL",
                    event="CLOSE",
                )
            )

        for body, user_id in (
            (ack(a, "genuine"), a),
            (ack(b, "genuine"), a),  # A's connection, A's key, B in the body
            (ack(a, "anonymous"), None),
            (ack(a, "for-b"), a),  # its own name, another client's command
            (ack(a, "never-sent"), a),  # a command that does not exist
        ):
            assert _refused(urls[a], _publish_as(topology.ack_routing_key(a), body, user_id)) == 200

        sample = running.sample
        wait_for(
            lambda: (
                sample("setevnt_acks_dropped_total", reason="wrong-user-id") == 1
                and sample("setevnt_acks_dropped_total", reason="missing-user-id") == 1
                and sample("setevnt_acks_dropped_total", reason="unknown-command") == 2
            ),
            15,
            "one counted and four dropped acks",
        )
        # The genuine ack counts under its command's own labels, not what it claimed.
        labels = {"component": "CCIM32", "event": "STARTCYCLE", "status": "done"}
        assert sample("setevnt_command_outcomes_total", **labels) == 1
        claimed = {"component": "CLISVCL", "event": "CLOSE", "status": "done"}
        assert sample("setevnt_command_outcomes_total", **claimed) == 0
        with Ledger(running.database) as ledger:
            assert _rows(ledger) == rows_before
            assert ledger.command("genuine").status == "done"  # type: ignore[union-attr]
            assert ledger.command("for-b").status == "sent"  # type: ignore[union-attr]


def test_collector_takes_reports_only_from_dispatchers(
    amqp_url: str, two_clients: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    """A client may publish on its own ack key, but a publish report or an issued-command
    record from it is dropped and counted: neither the published counters nor the ledger
    move."""
    from schemas.messages import Issued, PublishCount, PublishReport

    a, _b, urls = two_clients
    with collecting(amqp_url, tmp_path, Senders(dispatchers=frozenset({"guest"}))) as running:
        now = time.time()
        forged = PublishReport(
            "x", now, (PublishCount("CCIM32", "STARTCYCLE", "unroutable", 2**31 - 1),)
        )
        issued = Issued("x", "planned", "CCIM32", "STARTCYCLE", now, now + 60, {"forged": a})
        for body in (encode(forged), encode(issued)):
            publish = _publish_as(topology.ack_routing_key(a), body, a)
            assert _refused(urls[a], publish) == 200
        wait_for(
            lambda: running.sample("setevnt_reports_dropped_total", reason="not-a-dispatcher") == 2,
            15,
            "two reports dropped",
        )
        labels = {"component": "CCIM32", "event": "STARTCYCLE", "result": "unroutable"}
        assert running.sample("setevnt_commands_published_total", **labels) == 0
        with Ledger(running.database) as ledger:
            assert ledger.command("forged") is None


def _rows(ledger: Ledger) -> int:
    return sum(1 for c in ("genuine", "for-b", "anonymous", "never-sent") if ledger.command(c))


def _publish_as(routing_key: str, body: bytes, user_id: str | None) -> Callable[[Any], Any]:
    """A publish to the ack exchange claiming ``user_id`` (None: no user_id at all)."""
    return lambda ch: ch.basic_publish(
        topology.ACK_EXCHANGE, routing_key, body, pika.BasicProperties(user_id=user_id)
    )


def test_registry_records_only_heartbeats_sent_by_their_own_client(
    amqp_url: str, two_clients: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    """A heartbeat registers its client and provisions its queue: one that claims another
    client in its body, or leaves user_id out, is dropped and counted like such an ack."""
    a, b, urls = two_clients
    with collecting(amqp_url, tmp_path, Senders(dispatchers=frozenset({"guest"}))) as running:
        for claims, user_id in ((a, a), (b, a), ("NEVER-SEEN", a), (a, None)):
            publish = _publish_as(topology.hello_routing_key(a), _hello(claims), user_id)
            assert _refused(urls[a], publish) == 200

        def sample(reason: str) -> float:
            return running.sample("setevnt_heartbeats_dropped_total", reason=reason)

        wait_for(
            lambda: sample("wrong-user-id") == 2 and sample("missing-user-id") == 1,
            15,
            "two heartbeats from the wrong sender and one without a sender dropped",
        )
        with StoreRegistry(running.database) as reader:  # the collector's thread owns its own
            wait_for(lambda: reader.get(a) is not None, 10, f"{a} registered")
            assert reader.get(b) is None, "a heartbeat that claims B registered B"
            assert reader.get("NEVER-SEEN") is None


def _hello(client: str) -> bytes:
    return encode(
        Heartbeat(
            client_id=client, kind="hello", sent_at=time.time(), platform="nt", agent_version="t"
        )
    )
