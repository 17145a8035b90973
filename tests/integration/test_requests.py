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
from dispatcher.access.services import enroll_service
from dispatcher.service.intake import MAX_RECIPIENTS
from dispatcher.storms.progress import STALE_AFTER
from schemas.codec import MAX_BODY, decode, encode
from schemas.messages import TriggerReply, TriggerRequest
from tests.integration.fleet import Fleet, wait_runs
from tests.integration.helpers import queue_depth, wait_for

pytestmark = pytest.mark.broker

POLICY = """
[limits]
max_delivery_wait = "15m"

[users.{helpdesk}]
events = ["*_STARTCYCLE"]
targets = ["client"]
max_targets = 1
max_requests = 2
window = "1h"

[users.{ops}]
events = ["*"]
targets = ["client", "group", "all"]
max_targets = 1000
force = true

[users.{burst}]
events = ["*_STARTCYCLE"]
targets = ["client"]
max_targets = 2
max_requests = 1000
"""


RESTART_CLIENTS = 40
RESTART_RATE = 8.0  # commands/s: ~5 s of publishing, for the service to stop in


@dataclass
class Site:
    fleet: Fleet
    helpdesk: str  # broker URLs of the requesting services
    ops: str
    outsider: str  # a service with broker rights but no rule in the policy
    burst: str  # a service that sends many requests at once
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
    names = {who: f"{who}-{tag}" for who in ("helpdesk", "ops", "outsider", "burst")}
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(**names))
    fleet = Fleet(amqp_url, tmp_path)
    try:
        urls = {who: enroll_service(settings, management, name).url for who, name in names.items()}
        serve = fleet.serve("--policy", str(policy))
        serve.wait_line("taking requests from setevnt.requests")
        yield Site(
            fleet, urls["helpdesk"], urls["ops"], urls["outsider"], urls["burst"], names, serve
        )
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


# -- caps, quotas, fair turns, hostile properties ----------------------------------------

BURST = 100  # requests from one service, each for two clients that run no agent
BURST_RATE = 0.5  # commands/s: each burst storm publishes its second command 2 s later


def storm_rows(site: Site, requester: str) -> dict[str, dict[str, int]]:
    """Storm id -> its commands per status, for one requester's storms."""
    rows: dict[str, dict[str, int]] = {}
    with sqlite3.connect(site.fleet.db) as db:
        for storm_id, status, count in db.execute(
            "SELECT s.storm_id, c.status, count(*) FROM storms s JOIN commands c "
            "ON c.storm_id = s.storm_id WHERE s.requested_by = ? GROUP BY 1, 2",
            (requester,),
        ):
            rows.setdefault(storm_id, {})[status] = count
    return rows


def storm_states(site: Site, storm_ids: list[str]) -> list[str]:
    with sqlite3.connect(site.fleet.db) as db:
        states = dict(db.execute("SELECT storm_id, state FROM storms").fetchall())
    return [states.get(storm_id, "") for storm_id in storm_ids]


def test_caps_and_quotas_are_refused_with_their_reason(site: Site) -> None:
    ids = ["PC001", "PC002", "PC003"]
    quiet_clients(site, ids)
    with site.client("helpdesk") as client:
        with pytest.raises(RequestRefused) as over:
            client.trigger("CCIM32_STARTCYCLE", clients=["PC001"], ttl=1e8)  # 1,157 days
        assert over.value.reason == "over-limit"
        assert "ttl 1157d9h46m40s is above max_ttl 1d" in over.value.detail
        for client_id in ids[:2]:  # its quota: two requests an hour
            client.trigger("CCIM32_STARTCYCLE", clients=[client_id], delivery_wait=0.5)
        with pytest.raises(RequestRefused) as limited:
            client.trigger("CCIM32_STARTCYCLE", clients=["PC003"])
        assert limited.value.reason == "rate-limited"
        assert "max_requests 2 per 1h: retry in " in limited.value.detail
    with site.client("ops") as client:  # another requester's quota is its own
        client.trigger("CQMGR32_STARTCYCLE", clients=["PC003"], delivery_wait=0.5)

    def depths() -> list[int]:
        return [queue_depth(site.fleet.url, topology.client_queue(c)) for c in ids]

    wait_for(lambda: depths() == [1, 1, 1], 10, "one command per accepted request")
    wait_for(
        lambda: queue_depth(site.fleet.url, topology.DEAD_QUEUE) == 2, 5, "refusals dead-lettered"
    )
    assert site.storms() == 3
    assert (site.metric("refused", "over-limit"), site.metric("refused", "rate-limited")) == (1, 1)


def test_a_burst_from_one_service_does_not_delay_anothers_summary(
    site: Site, tmp_path: Path
) -> None:
    """A service sends 100 requests for clients that run no agent, each paced to publish
    for 2 s; then the help desk asks for one client whose agent runs. Its summary arrives
    while the burst is still being worked through, never more than two of whose storms
    publish at once (max_running); the storms waiting their turn never read as
    interrupted."""
    quiet = [f"Q{n:05d}" for n in range(2 * BURST)]
    quiet_clients(site, quiet)
    site.fleet.simulate(1, "--record", str(tmp_path / "runs.jsonl"), prefix="LIVE")
    wait_for(lambda: len(site.fleet.clients()) == len(quiet) + 1, 30, "the live client")
    burst_sent = time.time()
    with site.client("burst") as burst:
        for pair in zip(quiet[::2], quiet[1::2], strict=True):
            burst.trigger("CCIM32_STARTCYCLE", clients=list(pair), rate=BURST_RATE)
    with site.client("helpdesk") as client:
        summary = client.trigger("CCIM32_STARTCYCLE", clients=["LIVE00000"]).wait(timeout=60)
    burst_storms = storm_rows(site, site.names["burst"])
    assert (summary.state, summary.counts) == ("done", {"done": 1})
    assert len(burst_storms) == BURST
    publishing = [s for s, counts in burst_storms.items() if counts.get("planned") == 1]
    untouched = [s for s, counts in burst_storms.items() if counts.get("planned") == 2]
    assert untouched, f"the burst was over before the help desk's summary: {burst_storms}"
    assert len(publishing) <= 2, "more than max_running of one requester's storms at once"
    # The storms waiting their turn stay this service's: none reads as interrupted.
    time.sleep(max(0.0, burst_sent + STALE_AFTER + 2 - time.time()))
    now = time.time()
    with sqlite3.connect(site.fleet.db) as db:
        stale = db.execute(
            "SELECT count(*) FROM storms WHERE requested_by = ? AND state = 'running' "
            "AND heartbeat_at < ?",
            (site.names["burst"], now - STALE_AFTER),
        ).fetchone()[0]
        running = db.execute(
            "SELECT count(*) FROM storms WHERE requested_by = ? AND state = 'running'",
            (site.names["burst"],),
        ).fetchone()[0]
    assert running > 2, "the burst was over before its waiting storms could go stale"
    assert stale == 0, f"{stale} of {running} waiting storms read as interrupted"


def test_a_request_for_offline_clients_does_not_hold_a_worker(site: Site, tmp_path: Path) -> None:
    """Six requests whose clients never answer, each with a 10-minute delivery wait, more
    than there are workers: the same service's next request still runs and gets its
    summary, and the six storms ended at their commands' confirms."""
    quiet = [f"OFF{n:03d}" for n in range(6)]
    quiet_clients(site, quiet)
    site.fleet.simulate(1, "--record", str(tmp_path / "runs.jsonl"), prefix="LIVE")
    wait_for(lambda: len(site.fleet.clients()) == len(quiet) + 1, 30, "the live client")
    with site.client("burst") as client:
        offline = [
            client.trigger("CCIM32_STARTCYCLE", clients=[c], delivery_wait=600) for c in quiet
        ]
        summary = client.trigger("CCIM32_STARTCYCLE", clients=["LIVE00000"]).wait(timeout=60)
    assert (summary.state, summary.counts) == ("done", {"done": 1})
    ids = [handle.storm_id for handle in offline]
    wait_for(  # ten minutes before their delivery wait is over
        lambda: storm_states(site, ids) == ["done"] * len(ids), 30, "the six storms done"
    )
    rows = storm_rows(site, site.names["burst"])
    assert [rows[storm_id] for storm_id in ids] == [{"sent": 1}] * len(ids), "unanswered"


def _publish(url: str, body: bytes, properties: pika.BasicProperties) -> TriggerReply | None:
    """Publish a request with hand-made properties; its reply, when it goes to this
    connection's direct reply-to."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        replies: list[tuple[Any, bytes]] = []
        channel.basic_consume(
            topology.DIRECT_REPLY_TO, lambda *a: replies.append((a[2], a[3])), auto_ack=True
        )
        channel.confirm_delivery()
        channel.basic_publish(topology.REQUEST_EXCHANGE, "", body, properties)
        if properties.reply_to != topology.DIRECT_REPLY_TO:
            return None
        wait_for(lambda: connection.process_data_events(0.1) or replies, 10, "a reply")
        reply_properties, reply = replies[0]
        assert reply_properties.correlation_id is None  # it could not be echoed as text
        return decode(reply, TriggerReply)
    finally:
        connection.close()


def test_properties_that_are_not_text_do_not_stop_the_intake(site: Site) -> None:
    """pika hands a reply_to or correlation_id that is not UTF-8 over as bytes."""
    quiet_clients(site, ["PC001", "PC002"])
    user = site.names["ops"]
    body = encode(TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC001",)))
    _publish(site.ops, body, pika.BasicProperties(user_id=user, reply_to=b"amq.gen-\xff\xfe"))
    wait_for(lambda: site.metric("refused", "bad-reply-to") == 1, 10, "the bad reply_to refused")
    odd = pika.BasicProperties(
        user_id=user, reply_to=topology.DIRECT_REPLY_TO, correlation_id=b"\xc3\x28"
    )
    reply = _publish(site.ops, body, odd)
    assert reply is not None and (reply.status, reply.reason) == ("refused", "bad-request")
    assert reply.detail == "correlation_id: not UTF-8 text"
    wait_for(lambda: site.metric("refused", "bad-request") == 1, 10, "the odd correlation_id")
    with site.client("ops") as client:  # the intake still takes requests
        accepted = client.trigger("CCIM32_STARTCYCLE", clients=["PC002"], delivery_wait=0.5)
    assert accepted.targets == 1
    wait_for(lambda: queue_depth(site.fleet.url, topology.DEAD_QUEUE) == 2, 5, "both dead-lettered")
    assert queue_depth(site.fleet.url, topology.client_queue("PC001")) == 0
    assert "Traceback" not in site.serve.output


def test_replays_cannot_grow_what_the_service_owes(site: Site) -> None:
    """Replays spend no quota; the askers a summary is owed to stay bounded anyway."""
    quiet_clients(site, ["PC001"])
    ask = {"clients": ["PC001"], "idempotency_key": "T-1", "delivery_wait": 0.5}
    with site.client("ops") as client:
        first = client.trigger("CCIM32_STARTCYCLE", **ask)
        for _ in range(MAX_RECIPIENTS + 9):
            again = client.trigger("CCIM32_STARTCYCLE", **ask)
            assert again.replayed and again.storm_id == first.storm_id
    with sqlite3.connect(site.fleet.db) as db:
        (owed,) = db.execute(
            "SELECT count(*) FROM request_storms WHERE storm_id = ?", (first.storm_id,)
        ).fetchone()
    assert owed == MAX_RECIPIENTS
    assert site.metric("replayed", "none") == MAX_RECIPIENTS + 9
