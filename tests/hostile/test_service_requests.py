"""A service user's credentials against ``setevnt.requests`` (issue 21, item 2).

An enrolled service may only publish to ``setevnt.requests``, under its own ``user_id``;
the site's policy lets it trigger any ``*_STARTCYCLE`` on up to 1,000 clients. Whatever
it sends, every request that names a reply queue is answered (accepted or refused with
a reason), the intake and the collector keep consuming, the ledger grows by exactly what
was accepted, a reply never goes to a client's queue, and afterwards a genuine command
and a genuine request, made by another service user with the same rule, still complete:
one requester may use up its own share, never the others'.

Batches: hypothesis msgpack and raw bytes (requests and every other message type,
broken; maps with keys that are not text; 1 MiB bodies) with replies pointed at client
queues among them; then, last because what they hold up stays held up, requests within
the schema that ask for a long hold: ttl=1e8, delivery_wait=1e9, rate=1e-9, 1,000
clients. A spread just under the ttl is in test_service_spread.py: it holds the agent,
and an agent held would hide what holds the dispatcher.

Reproduce, with the figures tables (also written under the base temp directory):

    CI=true .venv/bin/python -m pytest tests/hostile/test_service_requests.py -rP \\
        --basetemp /tmp/hostile
"""

from __future__ import annotations

import msgpack
import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from schemas.codec import decode_any, encode
from schemas.messages import Command, TriggerRequest
from tests.hostile.batch import Batch, conclude, judge
from tests.hostile.requester import Requests
from tests.hostile.site import Site
from tests.hostile.wire import big_bodies, draw, hostile_values, pack, raw_bodies, shaped

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(400)]

SHAPED_REQUESTS = 120
SHAPED_ANY = 40
VALUES = 40
RAW = 40
REPLY_WAIT = 15.0  # for replies still in flight once the genuine request was answered
HOLDS = 5  # requests of each holding kind: more than the intake has storm workers


def _request(site: Site, event: str = "CQMGR32_STARTCYCLE", **fields: object) -> bytes:
    return encode(TriggerRequest(event=event, **fields))  # type: ignore[arg-type]


def _bytes_keys(site: Site) -> list[bytes]:
    """Valid requests but for keys that are bytes: beside the text ones, or instead."""
    body = msgpack.unpackb(_request(site, clients=(site.quiet_id,), delivery_wait=1.0))
    return [
        pack({**body, b"event": "CCIM32_STARTCYCLE"}),
        pack({**body, b"x": 1}),
        pack({key.encode(): value for key, value in body.items()}),
        pack({**{k: v for k, v in body.items() if k != "clients"}, b"clients": [site.quiet_id]}),
        pack({**body, 7: "seven", None: "nil", 2.5: "float", False: "no"}),
    ]


def test_hypothesis_requests_and_raw_bytes(
    site: Site, service: Requests, figures: list[Batch]
) -> None:
    requests = draw(shaped(kinds=("trigger-request",), client_id=site.quiet_id), SHAPED_REQUESTS)
    others = draw(shaped(client_id=site.quiet_id), SHAPED_ANY)
    values = draw(hostile_values().map(pack), VALUES)
    raw = draw(raw_bodies(), RAW)
    misdirected = _request(site, clients=(site.quiet_id,), delivery_wait=1.0)
    agent_lines = len(site.agent.lines)
    before = site.snapshot()
    answered: list[str] = []
    sent = []
    for kind, bodies in (
        ("broken trigger requests", requests),
        ("broken messages of every type", others),
        ("hypothesis msgpack values", values),
        ("near-msgpack bytes", raw),
        ("requests with keys that are not text", _bytes_keys(site)),
        ("1 MiB bodies", big_bodies(2)),
    ):
        tally, ids = service.send(kind, bodies)
        sent.append(tally)
        answered += ids
    for queue in (topology.client_queue(site.quiet_id), site.agent_queue):
        tally, _ = service.send(
            f"valid requests, reply_to {queue}", [misdirected] * 3, reply_to=queue
        )
        sent.append(tally)

    def misrouted() -> list[str]:
        found = service.unanswered(answered)
        found += [f"a {kind} reached {site.quiet_id}'s queue" for kind in _not_commands(site)]
        found += [
            f"the agent received a reply: {line}"
            for line in site.agent.lines[agent_lines:]
            if "got a trigger-" in line
        ]
        return found

    batch = judge(
        site,
        "service: hypothesis",
        before,
        sent,
        accepted=lambda: service.accepted(answered, REPLY_WAIT),
        checks=misrouted,
        notes=lambda: [service.summary(answered)],
    )
    conclude(figures, batch)


def test_requests_that_ask_for_a_long_hold(
    site: Site, service: Requests, figures: list[Batch]
) -> None:
    """Within the schema and the policy, but each holds something for years: a storm
    worker (rate, delivery wait), a summary (ttl). Every request has clients of its own,
    so none is coalesced into another's pending command. Last in the module: nothing
    here lets go of what it holds. (The spread, which holds the agent, has a module of
    its own: test_service_spread.py.)"""
    quiet = site.quiet_id
    silent = {kind: [f"{quiet}-{kind}{n}" for n in range(HOLDS)] for kind in ("T", "D")}
    with Dispatcher(site.url) as dispatcher:  # queues that take commands nobody reads
        dispatcher.provision([*silent["T"], *silent["D"]])
    holds = {
        "1,000 clients": [_request(site, clients=tuple(f"{quiet}-N{n:04d}" for n in range(1000)))],
        "ttl=1e8": [_request(site, clients=(c,), ttl=1e8) for c in silent["T"]],
        "rate=1e-9": [
            _request(site, clients=(f"{quiet}-R{n}a", f"{quiet}-R{n}b"), rate=1e-9)
            for n in range(HOLDS)
        ],
        "delivery_wait=1e9": [_request(site, clients=(c,), delivery_wait=1e9) for c in silent["D"]],
    }
    before = site.snapshot()
    answered: list[str] = []
    sent = []
    for kind, bodies in holds.items():
        tally, ids = service.send(f"request with {kind}", bodies)
        sent.append(tally)
        answered += ids

    batch = judge(
        site,
        "service: long holds",
        before,
        sent,
        accepted=lambda: service.accepted(answered, REPLY_WAIT),
        checks=lambda: service.unanswered(answered),
        notes=lambda: [service.summary(answered)],
    )
    conclude(figures, batch)


def _not_commands(site: Site) -> list[str]:
    """Take everything from the quiet client's queue (nobody reads it); what is not a
    command, by type."""
    connection = pika.BlockingConnection(pika.URLParameters(site.url))
    found = []
    try:
        channel = connection.channel()
        queue = topology.client_queue(site.quiet_id)
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            try:
                message = decode_any(body)
            except ValueError:
                message = None
            if not isinstance(message, Command):
                found.append(type(message).__name__ if message else repr(properties.type))
    finally:
        connection.close()
