"""Requests from other services through ``setevnt.requests``, against the real broker.

The dispatcher service runs as an operator runs it (``serve --policy``); requesters are
real broker users with only a service's permissions (write to ``setevnt.requests``),
created through the management API and deleted afterwards (users are broker-wide).
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest

from broker import topology
from broker.errors import BrokerRefused
from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher import Client, Dispatcher, RequestRefused
from dispatcher.services import enroll_service
from schemas.codec import MAX_BODY, decode, encode
from schemas.messages import TriggerReply, TriggerRequest
from tests.integration.fleet import Fleet, wait_runs
from tests.integration.helpers import queue_depth, wait_for

pytestmark = pytest.mark.broker

POLICY = """
[users.{helpdesk}]
events = ["*_STARTCYCLE"]
targets = ["client"]
max_targets = 1

[users.{ops}]
events = ["*"]
targets = ["client", "group", "all"]
max_targets = 1000
force = true
"""


RESTART_CLIENTS = 40
RESTART_RATE = 8.0  # commands/s: ~5 s of publishing, for the service to stop in


@dataclass
class Site:
    fleet: Fleet
    helpdesk: str  # broker URLs of the two requesting services
    ops: str
    outsider: str  # a service with broker rights but no rule in the policy
    names: dict[str, str]
    serve: Any

    def client(self, who: str) -> Client:
        return Client(getattr(self, who), accept_timeout=15)

    def storms(self) -> int:
        with sqlite3.connect(self.fleet.db) as db:
            return int(db.execute("SELECT count(*) FROM storms").fetchone()[0])

    def metric(self, outcome: str, reason: str) -> float:
        port = re.search(r"metrics on http://[\d.]+:(\d+)/", self.serve.output)
        assert port, self.serve.output
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics") as page:
            text = page.read().decode()
        line = f'setevnt_requests_total{{outcome="{outcome}",reason="{reason}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0


@pytest.fixture
def site(amqp_url: str, tmp_path: Path) -> Iterator[Site]:
    settings = BrokerSettings(url=amqp_url)
    management = Management.for_broker(settings)
    tag = uuid.uuid4().hex[:8]
    names = {who: f"{who}-{tag}" for who in ("helpdesk", "ops", "outsider")}
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(**names))
    fleet = Fleet(amqp_url, tmp_path)
    try:
        urls = {who: enroll_service(settings, management, name).url for who, name in names.items()}
        serve = fleet.serve("--policy", str(policy))
        serve.wait_line("taking requests from setevnt.requests")
        yield Site(fleet, urls["helpdesk"], urls["ops"], urls["outsider"], names, serve)
    finally:
        fleet.stop()
        for name in names.values():
            if management.user_exists(name):
                management.delete_user(name)


def quiet_clients(site: Site, ids: list[str], groups: tuple[str, ...] = ()) -> None:
    """Clients that exist (registered, queues provisioned) but run no agent: what is
    enqueued for them stays in their queues, where a test can count it."""
    site.fleet.register(ids, groups=groups)
    with Dispatcher(site.fleet.url) as dispatcher:
        dispatcher.provision(ids)


def test_permitted_request_reaches_its_targets_with_both_replies(
    site: Site, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    site.fleet.simulate(3, "--groups", "lab", "--record", str(record), prefix="REQ")
    wait_for(lambda: len(site.fleet.clients()) == 3, 20, "3 registered clients")
    with site.client("helpdesk") as client:
        handle = client.trigger("CCIM32_STARTCYCLE", clients=["REQ00001"], silent=True)
        assert (handle.reply.status, handle.targets, handle.replayed) == ("accepted", 1, False)
        summary = handle.wait(timeout=30)
    assert summary.storm_id == handle.storm_id
    assert (summary.state, summary.targets, summary.published) == ("done", 1, 1)
    assert summary.counts == {"done": 1}
    assert summary.latency_p50 is not None and summary.latency_p99 is not None
    assert sorted(wait_runs(record, 1)) == ["REQ00001"]
    with site.client("ops") as client:
        summary = client.trigger("CQMGR32_STARTCYCLE", groups=["lab"]).wait(timeout=30)
    assert (summary.state, summary.targets, summary.counts) == ("done", 3, {"done": 3})
    assert site.storms() == 2
    assert site.metric("accepted", "none") == 2


def test_refused_user_gets_a_refusal_and_nothing_is_enqueued(site: Site) -> None:
    ids = ["PC001", "PC002"]
    quiet_clients(site, ids, groups=("lab",))
    refusals = {
        "CLOSE by the help desk": ("helpdesk", "CLISVCL_CLOSE", {"clients": ["PC001"]}),
        "a group by the help desk": ("helpdesk", "CCIM32_STARTCYCLE", {"groups": ["lab"]}),
        "all by the help desk": ("helpdesk", "CCIM32_STARTCYCLE", {"all": True}),
        "two clients by the help desk": ("helpdesk", "CCIM32_STARTCYCLE", {"clients": ids}),
        "force by the help desk": (
            "helpdesk",
            "CCIM32_STARTCYCLE",
            {"clients": ["PC001"], "force": True},
        ),
        "a user without a rule": ("outsider", "CCIM32_STARTCYCLE", {"clients": ["PC001"]}),
    }
    for case, (who, event, targets) in refusals.items():
        with site.client(who) as client, pytest.raises(RequestRefused) as refused:
            client.trigger(event, **targets)
        assert refused.value.reason == "not-permitted", case
        assert site.names[who] in refused.value.detail, case
    assert [queue_depth(site.fleet.url, topology.client_queue(c)) for c in ids] == [0, 0]
    assert site.storms() == 0
    wait_for(
        lambda: queue_depth(site.fleet.url, topology.DEAD_QUEUE) == len(refusals),
        5,
        "every refused request dead-lettered",
    )
    assert site.metric("refused", "not-permitted") == len(refusals)


def test_forged_user_id_is_refused_by_the_broker(site: Site) -> None:
    quiet_clients(site, ["PC001"])
    body = encode(TriggerRequest(event="CLISVCL_CLOSE", clients=("PC001",)))
    with site.client("helpdesk") as client, pytest.raises(BrokerRefused) as refused:
        client.send(body, user_id=site.names["ops"])  # pretending to be the operators
    assert refused.value.code == 406
    assert "user_id" in str(refused.value)
    with site.client("helpdesk") as client:  # the same request under its own name
        with pytest.raises(RequestRefused) as denied:
            client.send(body)
        assert denied.value.reason == "not-permitted"
    assert queue_depth(site.fleet.url, topology.client_queue("PC001")) == 0
    assert site.storms() == 0
    assert site.metric("refused", "not-permitted") == 1  # only the honest one arrived


def test_idempotent_retry_is_answered_with_the_original_and_enqueued_once(site: Site) -> None:
    quiet_clients(site, ["PC001"])
    queue = topology.client_queue("PC001")
    request = {"clients": ["PC001"], "idempotency_key": "T-4711", "delivery_wait": 0.5}
    with site.client("helpdesk") as client:
        started = time.monotonic()
        first = client.trigger("CCIM32_STARTCYCLE", ttl=3, **request)
        retry = client.trigger("CCIM32_STARTCYCLE", ttl=3, **request)
        assert (first.replayed, retry.replayed) == (False, True)
        assert retry.storm_id == first.storm_id
        wait_for(  # before the command expires
            lambda: queue_depth(site.fleet.url, queue) == 1, 2.5, "the command enqueued once"
        )
        # Nobody consumes PC001's queue: the summary waits for the command to expire.
        summary = first.wait(timeout=15)
        assert time.monotonic() - started >= 3.0, "a summary before the target expired"
        assert summary.counts == {"expired": 1}
        assert retry.wait(timeout=5) == summary
        late = client.trigger("CCIM32_STARTCYCLE", **request)
        assert late.storm_id == first.storm_id
        assert late.wait(timeout=5) == summary  # settled long ago: the summary at once
    assert queue_depth(site.fleet.url, topology.DEAD_QUEUE) == 1  # the broker expired it
    with site.client("ops") as client:  # keys are per requester: not a retry
        other = client.trigger("CQMGR32_STARTCYCLE", **request)
        assert other.storm_id != first.storm_id
    wait_for(lambda: queue_depth(site.fleet.url, queue) == 1, 5, "the ops command queued")
    assert site.storms() == 2
    assert site.metric("replayed", "none") == 2


def test_a_service_restart_mid_storm_loses_nothing(site: Site, tmp_path: Path) -> None:
    """The service stops while a paced request storm publishes: the storm is left
    interrupted with its unsent commands planned, the next service resumes it, and the
    requester, still waiting, gets the summary the first service owed it."""
    record = tmp_path / "runs.jsonl"
    clients = [f"RST{n:05d}" for n in range(RESTART_CLIENTS)]
    site.fleet.simulate(RESTART_CLIENTS, "--record", str(record), prefix="RST")
    wait_for(lambda: len(site.fleet.clients()) == RESTART_CLIENTS, 30, "the clients registered")
    with site.client("ops") as client:
        handle = client.trigger("CCIM32_STARTCYCLE", clients=clients, rate=RESTART_RATE)
        wait_runs(record, 5)  # well under way
        assert site.serve.terminate() == 0
        with sqlite3.connect(site.fleet.db) as db:
            (state,) = db.execute(
                "SELECT state FROM storms WHERE storm_id = ?", (handle.storm_id,)
            ).fetchone()
            statuses = dict(
                db.execute(
                    "SELECT status, count(*) FROM commands WHERE storm_id = ? GROUP BY status",
                    (handle.storm_id,),
                ).fetchall()
            )
        assert state == "interrupted"
        assert statuses.get("planned", 0) > 0, f"the storm ended before the stop: {statuses}"
        site.serve = site.fleet.serve("--policy", str(tmp_path / "policy.toml"))
        summary = handle.wait(timeout=60)
    assert (summary.state, summary.published) == ("done", RESTART_CLIENTS)
    assert summary.counts == {"done": RESTART_CLIENTS}
    ran = wait_runs(record, RESTART_CLIENTS)
    assert sorted(ran) == clients
    assert all(len(ids) == 1 for ids in ran.values()), "a client ran its command twice"
    assert site.storms() == 1
    assert "resuming request storm" in site.serve.output


def _raw(url: str, body: bytes, *, user_id: str | None) -> TriggerReply:
    """Publish ``body`` as it is, without the Client (which always sets user_id)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        replies: list[bytes] = []
        channel.basic_consume(
            topology.DIRECT_REPLY_TO, lambda *a: replies.append(a[3]), auto_ack=True
        )
        properties = pika.BasicProperties(
            user_id=user_id, reply_to=topology.DIRECT_REPLY_TO, correlation_id="raw"
        )
        channel.basic_publish(topology.REQUEST_EXCHANGE, "", body, properties)
        wait_for(lambda: connection.process_data_events(0.1) or replies, 10, "a reply")
        return decode(replies[0], TriggerReply)
    finally:
        connection.close()


def test_bad_requests_are_refused_with_their_reason_while_good_ones_flow(site: Site) -> None:
    ids = [f"PC{n:03d}" for n in range(9)]  # one per good request: no coalescing
    quiet_clients(site, ids)
    good = [TriggerRequest(event="CCIM32_STARTCYCLE", clients=(c,), delivery_wait=0.5) for c in ids]
    body = msgpack.unpackb(encode(good[0]))
    bad = {
        "undecodable": b"\xc1not msgpack",
        "unknown-event": msgpack.packb({**body, "event": "CCIM32_EXPLODE"}),
        "bad-event-name": msgpack.packb({**body, "event": "ccim32_startcycle"}),
        "no-targets": msgpack.packb({**body, "clients": []}),
        "too-large": msgpack.packb({**body, "padding": "x" * MAX_BODY}),
        "unsupported-version": msgpack.packb({**body, "v": [2, 0]}),
        "bad-request": msgpack.packb({**body, "ttl": "an hour"}),
    }
    storms = []
    with site.client("ops") as client:
        for (reason, data), request in zip(bad.items(), good, strict=False):
            with pytest.raises(RequestRefused) as refused:
                client.send(data)
            assert refused.value.reason == reason, refused.value
            assert refused.value.detail
            storms.append(client.send(encode(request)).storm_id)  # the intake keeps going
    anonymous = _raw(site.ops, encode(good[-2]), user_id=None)
    assert (anonymous.status, anonymous.reason) == ("refused", "no-user-id")
    assert _raw(site.ops, encode(good[-1]), user_id=site.names["ops"]).status == "accepted"
    assert len(set(storms)) == len(bad)
    wanted = [1] * len(bad) + [0, 1]  # the anonymous request's client got nothing

    def depths() -> list[int]:
        return [queue_depth(site.fleet.url, topology.client_queue(c)) for c in ids]

    wait_for(lambda: depths() == wanted, 10, f"commands enqueued as {wanted}")
    wait_for(
        lambda: queue_depth(site.fleet.url, topology.DEAD_QUEUE) == len(bad) + 1,
        5,
        "every bad request dead-lettered",
    )
    for reason in [*bad, "no-user-id"]:
        assert site.metric("refused", reason) == 1, reason
    assert site.metric("accepted", "none") == len(bad) + 1


def test_reply_to_elsewhere_than_a_reply_queue_is_not_followed(site: Site) -> None:
    """A request cannot make the dispatcher publish into a client's queue."""
    quiet_clients(site, ["PC001"])
    connection = pika.BlockingConnection(pika.URLParameters(site.ops))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            user_id=site.names["ops"], reply_to=topology.client_queue("PC001")
        )
        body = encode(TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC001",)))
        channel.basic_publish(topology.REQUEST_EXCHANGE, "", body, properties)
    finally:
        connection.close()
    wait_for(lambda: site.metric("refused", "bad-reply-to") == 1, 10, "the refusal")
    assert queue_depth(site.fleet.url, topology.client_queue("PC001")) == 0
    assert queue_depth(site.fleet.url, topology.DEAD_QUEUE) == 1
