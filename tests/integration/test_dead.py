"""`setevnt-dispatcher dead`: every dead letter with why it is there, none taken away.

Commands that real (simulated) agents rejected, one that expired unread in its queue and a
request the real intake refused all end in `setevnt.dead`; `dead` must say why for each
(the broker's x-death, the ledger's reason, the refusal's headers), leave the queue as it
was, and survive whatever headers a message there carries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from dispatcher.service.dead_letters import REFUSAL
from tests.integration.fleet import Fleet
from tests.integration.helpers import channel, queue_depth, wait_for

pytestmark = pytest.mark.broker


def publish(url: str, exchange: str, body: bytes, **properties: Any) -> None:
    connection, ch = channel(url)
    try:
        ch.basic_publish(exchange, "", body, pika.BasicProperties(**properties))
    finally:
        connection.close()


def listed(fleet: Fleet, *args: str) -> list[dict[str, Any]]:
    shown = fleet.dispatcher("dead", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


def test_dead_says_why_each_message_is_there_and_takes_none(fleet: Fleet) -> None:
    fleet.serve()  # no policy: it refuses every request
    fleet.simulate(2, "--provision")
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(["GONE"])
    agents = ("--client", "SIM00000", "--client", "SIM00001")
    _code, forced = fleet.storm("CCIM32_STARTCYCLE", *agents, "--force")
    assert forced["counts"] == {"rejected": 2}, forced  # the agents do not allow --force
    fleet.storm("CCIM32_STARTCYCLE", "--client", "GONE", "--ttl", "1s", "--delivery-wait", "1s")
    wait_for(lambda: queue_depth(fleet.url, topology.DEAD_QUEUE) == 3, 20, "3 dead commands")
    publish(fleet.url, topology.REQUEST_EXCHANGE, b"\xc1 no msgpack", user_id="guest")
    wait_for(lambda: queue_depth(fleet.url, topology.DEAD_QUEUE) == 4, 20, "the refusal")

    messages = listed(fleet)
    assert listed(fleet) == messages, "the same messages, in the same order"
    assert queue_depth(fleet.url, topology.DEAD_QUEUE) == 4, "nothing taken off"
    assert [m["position"] for m in messages] == [1, 2, 3, 4]
    rejected, expired, refused = messages[:2], messages[2], messages[3]
    for message in rejected:
        death, command = message["death"], message["command"]
        assert death["reason"] == "rejected" and death["at"] > 0
        assert death["queue"] == topology.client_queue(command["client"])
        assert message["message_id"] == command["command_id"]
        assert (command["status"], command["reason"]) == ("rejected", "not-permitted")
        assert "forced commands are not allowed" in command["detail"]
    assert {m["command"]["client"] for m in rejected} == {"SIM00000", "SIM00001"}
    assert expired["death"]["reason"] == "expired"
    assert expired["command"]["client"] == "GONE" and expired["command"]["status"] == "expired"
    assert refused["death"] is None and refused["command"] is None
    assert refused["refusal"]["reason"] == "undecodable"
    assert refused["refusal"]["requester"] == "guest" and refused["refusal"]["detail"]
    assert refused["bytes"] == len(b"\xc1 no msgpack")

    table = fleet.dispatcher("dead")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "setevnt.dead: 4 message(s); the first 4, left where they are:"
    assert lines[1].split()[:4] == ["#", "WHEN", "(UTC)", "WHY"]
    assert "not-permitted" in lines[2] and "not-permitted" in lines[3]
    assert "expired" in lines[4] and "setevnt.client.GONE" in lines[4]
    assert "refused" in lines[5] and "request from guest" in lines[5]
    assert "undecodable" in lines[5]

    first = listed(fleet, "--limit", "1")
    assert len(first) == 1 and first[0] == messages[0]
    assert queue_depth(fleet.url, topology.DEAD_QUEUE) == 4


def test_dead_survives_any_headers_and_believes_none_it_should_not(fleet: Fleet) -> None:
    """Forged or malformed headers: nothing crashes, nothing is shown as what it is not."""
    fleet.serve()
    fleet.simulate(1, "--provision")
    fleet.storm("CCIM32_STARTCYCLE", "--client", "SIM00000", "--force")
    wait_for(lambda: queue_depth(fleet.url, topology.DEAD_QUEUE) == 1, 20, "the rejection")
    real = listed(fleet)[0]
    when = datetime(2030, 1, 1, tzinfo=UTC)
    odd_headers: list[dict[str, Any]] = [
        {"x-death": "nonsense", REFUSAL: "forged"},  # no queue dead-lettered it like this
        {"x-death": [{"reason": b"\xff\xfe", "queue": 12, "time": "soon", "count": True}]},
        {"x-death": [], "x-first-death-reason": {"deep": [1, {"x": None}]}},
        # A real command's id, from another client's queue: not that command.
        {
            "x-death": [{"reason": "rejected", "queue": "setevnt.client.OTHER", "time": when}],
            REFUSAL: "forged",
        },
        {"junk": "A" * 100_000},
    ]
    for n, headers in enumerate(odd_headers):
        message_id = real["message_id"] if n == 3 else f"\x1b[2Jodd-{n}\u202e"
        publish(
            fleet.url, topology.DEAD_EXCHANGE, b"\x00" * n, message_id=message_id, headers=headers
        )
    wait_for(lambda: queue_depth(fleet.url, topology.DEAD_QUEUE) == 6, 20, "the odd ones")

    messages = listed(fleet)
    assert messages[0] == real
    odd = messages[1:]
    assert all(m["refusal"] is None and m["command"] is None for m in odd)
    assert odd[0]["death"] is None and odd[2]["death"] is None
    assert odd[1]["death"] == {"reason": "\ufffd\ufffd", "queue": None, "at": None, "count": None}
    assert odd[3]["death"]["queue"] == "setevnt.client.OTHER"
    assert odd[3]["death"]["at"] == when.timestamp()
    table = fleet.dispatcher("dead")
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    assert len(table.stdout.splitlines()) == 2 + 6
    assert queue_depth(fleet.url, topology.DEAD_QUEUE) == 6
