"""The confirming publisher against the real broker: outcomes, reconnects, giving up."""

from __future__ import annotations

import socket
import time
import urllib.parse
from typing import Any

import pytest

from broker import publisher as publisher_module
from broker import topology
from broker.errors import BrokerRefused, ConnectionLost
from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from tests.conftest import management
from tests.integration.helpers import channel, drain, queue_depth, wait_for

pytestmark = pytest.mark.broker


class Hooks:
    def __init__(self) -> None:
        self.reconnects = 0
        self.confirmed_count = 0

    def confirmed(self, outcome: Outcome, seconds: float) -> None:
        self.confirmed_count += 1

    def reconnected(self) -> None:
        self.reconnects += 1


def _messages(prefix: str, queue: str, count: int) -> list[Outgoing]:
    return [Outgoing(f"{prefix}{i}", "", queue, b"x" * 200, "command") for i in range(count)]


def _spread(
    amqp_url: str, prefix: str, queues: int, count: int
) -> tuple[list[str], list[Outgoing]]:
    """``queues`` durable queues, and ``count`` messages spread over them in turn."""
    names = [f"{prefix}.{n}" for n in range(queues)]
    connection, ch = channel(amqp_url)
    for name in names:
        ch.queue_declare(name, durable=True)
    connection.close()
    messages = [
        Outgoing(f"m{i}", "", names[i % queues], b"x" * 200, "command") for i in range(count)
    ]
    return names, messages


def test_outcomes_sent_unroutable_in_one_batch(amqp_url: str) -> None:
    connection, ch = channel(amqp_url)
    ch.queue_declare("bench.q", durable=True)
    connection.close()
    messages = _messages("ok", "bench.q", 300) + _messages("gone", "no.such.queue", 50)
    with ConfirmingPublisher(BrokerSettings(url=amqp_url), window=64) as publisher:
        outcomes = publisher.publish(messages)
    assert sum(o is Outcome.SENT for o in outcomes.values()) == 300
    assert all(outcomes[f"gone{i}"] is Outcome.UNROUTABLE for i in range(50))
    assert queue_depth(amqp_url, "bench.q") == 300


def test_a_window_split_over_channels_publishes_everything_once(amqp_url: str, vhost: str) -> None:
    queues, spread = _spread(amqp_url, "split", 20, 2000)
    messages = spread + _messages("gone", "no.such.queue", 40)
    settings = BrokerSettings(url=amqp_url, connection_name="split-publisher")
    with ConfirmingPublisher(settings, window=64, channels=4) as publisher:
        outcomes = publisher.publish(messages)
        ours = wait_for(
            lambda: [c for c in _connections(vhost) if c.get("channels")],
            20,
            "the publisher's connection in the management API",
        )
    assert [c["channels"] for c in ours] == [4]  # one connection, four channels
    # Returns arrive on whichever channel published the message: each is matched.
    assert outcomes == {
        m.key: Outcome.UNROUTABLE if m.key.startswith("gone") else Outcome.SENT for m in messages
    }
    assert [queue_depth(amqp_url, q) for q in queues] == [100] * len(queues)


class ListSource:
    """A stream source that hands out a list, noting the room it was offered each time
    it had something to give."""

    def __init__(self, messages: list[Outgoing]) -> None:
        self.left = list(messages)
        self.offered: list[int] = []

    def take(self, room: int) -> list[Outgoing]:
        if self.left:
            self.offered.append(room)
        batch, self.left = self.left[:room], self.left[room:]
        return batch

    def tick(self) -> None:
        pass

    def finished(self) -> bool:
        return not self.left


def test_a_stream_is_refilled_a_few_slots_at_a_time(amqp_url: str) -> None:
    queues, messages = _spread(amqp_url, "refill", 10, 3000)
    source = ListSource(messages)
    settings = BrokerSettings(url=amqp_url)
    with ConfirmingPublisher(settings, window=512, channels=4) as publisher:
        outcomes = publisher.stream(source)
    assert outcomes == {m.key: Outcome.SENT for m in messages}
    assert [queue_depth(amqp_url, q) for q in queues] == [300] * len(queues)
    # 1/16 of each channel's 128: the source is never asked for fewer than 8 at a time,
    # so it hands out messages at most once per 8 confirms (the first fills the window).
    assert source.offered[0] == 512
    assert min(source.offered) >= 8
    assert len(source.offered) <= 1 + (3000 - 512) // 8


def test_a_stream_hears_each_outcome_once_and_keeps_each_message_properties(
    amqp_url: str,
) -> None:
    """Properties are reused for messages of one shape: each still goes with its own id,
    delivery mode and expiration; ``on_outcomes`` hears of every message once."""
    connection, ch = channel(amqp_url)
    ch.queue_declare("shapes.q", durable=True)
    connection.close()
    shaped = [
        Outgoing(
            f"s{i}",
            "",
            "shapes.q",
            b"%d" % i,
            "command",
            persistent=i % 2 == 0,
            expiration_ms=60_000 + i % 3,
        )
        for i in range(300)
    ]
    messages = shaped + _messages("gone", "no.such.queue", 20)
    calls: list[list[tuple[Outgoing, Outcome]]] = []
    with ConfirmingPublisher(BrokerSettings(url=amqp_url), window=64, channels=2) as publisher:
        outcomes = publisher.stream(ListSource(messages), on_outcomes=calls.append)
    settled = [pair for call in calls for pair in call]
    assert sorted(m.key for m, _ in settled) == sorted(m.key for m in messages)
    assert {m.key: outcome for m, outcome in settled} == outcomes
    assert all(outcomes[f"gone{i}"] is Outcome.UNROUTABLE for i in range(20))
    received = {
        properties.message_id: (properties.delivery_mode, properties.expiration, body)
        for properties, body in drain(amqp_url, "shapes.q")
    }
    assert received == {
        m.key: (2 if m.persistent else 1, str(m.expiration_ms), m.body) for m in shaped
    }


class PausingSource(ListSource):
    """Hands out everything at once; asked again (the publisher refilling after the first
    confirms it read), waits until the broker routed all of it to ``queues``: the
    confirms of the rest are then waiting to be read together."""

    def __init__(self, messages: list[Outgoing], url: str, queues: list[str]) -> None:
        super().__init__(messages)
        self.url, self.queues, self.waited = url, queues, False

    def take(self, room: int) -> list[Outgoing]:
        if not self.left and not self.waited:
            self.waited = True
            wait_for(
                lambda: sum(queue_depth(self.url, q) for q in self.queues) == 400,
                30,
                "the broker routing every message",
            )
            time.sleep(0.2)  # its confirms follow the routing
        return super().take(room)


def test_confirms_read_together_are_settled_together(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confirm frames that reach the publisher in one read (the two channels' here) are
    settled with one call; every message is heard of once."""
    queues, spread = _spread(amqp_url, "together", 4, 400)
    messages = [m._replace(persistent=False) for m in spread]  # confirmed once routed
    frames = 0
    read_confirm = publisher_module.read_confirm

    def counted(frame: Any) -> Any:
        nonlocal frames
        frames += 1
        return read_confirm(frame)

    monkeypatch.setattr(publisher_module, "read_confirm", counted)
    calls: list[list[tuple[Outgoing, Outcome]]] = []
    source = PausingSource(messages, amqp_url, queues)
    with ConfirmingPublisher(BrokerSettings(url=amqp_url), window=400, channels=2) as publisher:
        outcomes = publisher.stream(source, on_outcomes=calls.append)
    assert source.waited and source.offered == [400]  # all in flight while it waited
    assert outcomes == {m.key: Outcome.SENT for m in messages}
    settled = [message.key for call in calls for message, _ in call]
    assert sorted(settled) == sorted(m.key for m in messages)
    assert frames >= 2  # one channel's confirms never cover the other's messages
    assert len(calls) < frames


def test_a_refill_goes_out_in_one_write_and_in_order(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pika sends a message as three frames, each with a ``send()`` of its own; the
    publisher hands a refill's frames over as one write: far fewer system calls than
    messages, and on one channel the broker still gets every message whole and in order."""
    connection, ch = channel(amqp_url)
    ch.queue_declare("corked.q", durable=True)
    connection.close()
    messages = [Outgoing(f"c{i}", "", "corked.q", b"%06d" % i, "command") for i in range(600)]
    sends = 0
    plain_send = socket.socket.send

    def counted(sock: socket.socket, data: Any, *flags: int) -> int:
        nonlocal sends
        sends += 1
        return plain_send(sock, data, *flags)

    with ConfirmingPublisher(BrokerSettings(url=amqp_url), window=64) as publisher:
        monkeypatch.setattr(socket.socket, "send", counted)
        outcomes = publisher.publish(messages)
        monkeypatch.undo()
    assert outcomes == {m.key: Outcome.SENT for m in messages}
    # A refill is at least 4 messages (1/16 of the window), 12 frames, in one send.
    assert 0 < sends <= len(messages) // 4
    received = drain(amqp_url, "corked.q")
    assert [(p.message_id, body) for p, body in received] == [(m.key, m.body) for m in messages]


def test_a_stream_takes_on_outcome_or_on_outcomes_not_both() -> None:
    publisher = ConfirmingPublisher(BrokerSettings())
    with pytest.raises(ValueError, match="not both"):
        publisher.stream(ListSource([]), lambda *_: None, on_outcomes=lambda _: None)


def test_a_window_smaller_than_its_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be split over 4 channels"):
        ConfirmingPublisher(BrokerSettings(url="amqp://127.0.0.1/"), window=3, channels=4)


def _connections(vhost: str, name: str = "split-publisher") -> list[dict[str, Any]]:
    listed = management("GET", f"/vhosts/{urllib.parse.quote(vhost, safe='')}/connections")
    return [
        c for c in listed or [] if (c.get("client_properties") or {}).get("connection_name") == name
    ]


def test_full_queue_nacks_instead_of_dropping(amqp_url: str) -> None:
    connection, ch = channel(amqp_url)
    topology.declare_core(ch)
    topology.declare_client(ch, "PC001", topology.QueueLimits(max_length=5))
    connection.close()
    queue = topology.client_queue("PC001")
    with ConfirmingPublisher(BrokerSettings(url=amqp_url)) as publisher:
        outcomes = publisher.publish(_messages("m", queue, 8))
    assert sorted(o.value for o in outcomes.values()) == ["nacked"] * 3 + ["sent"] * 5


def test_publisher_reconnects_after_its_connection_is_closed(amqp_url: str, vhost: str) -> None:
    connection, ch = channel(amqp_url)
    ch.queue_declare("q", durable=True)
    connection.close()
    hooks = Hooks()
    settings = BrokerSettings(url=amqp_url, connection_name="publisher-under-test")
    with ConfirmingPublisher(settings, hooks=hooks) as publisher:
        publisher.publish(_messages("a", "q", 10))
        quoted = urllib.parse.quote(vhost, safe="")

        def ours() -> list[str]:
            listed = management("GET", f"/vhosts/{quoted}/connections") or []
            return [
                c["name"]
                for c in listed
                if (c.get("client_properties") or {}).get("connection_name")
                == "publisher-under-test"
            ]

        for name in wait_for(ours, 20, "publisher connection in the management API"):
            management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")
            break  # one publisher, one connection; older listings may be stale
        time.sleep(0.5)
        outcomes = publisher.publish(_messages("b", "q", 10))
    assert set(outcomes.values()) == {Outcome.SENT}
    assert hooks.reconnects == 1
    assert queue_depth(amqp_url, "q") == 20


def test_unreachable_broker_gives_up_after_bounded_retries(broker: None) -> None:
    settings = BrokerSettings(url="amqp://guest:guest@127.0.0.1:1/%2F")
    started = time.monotonic()
    with ConfirmingPublisher(settings, attempts=3) as publisher, pytest.raises(ConnectionLost):
        publisher.publish(_messages("x", "q", 3))
    assert time.monotonic() - started < 20


def test_bad_credentials_are_refused_not_retried(amqp_url: str) -> None:
    url = amqp_url.replace("guest:guest", "guest:wrong")
    with (
        ConfirmingPublisher(BrokerSettings(url=url), attempts=5) as publisher,
        pytest.raises(BrokerRefused),
    ):
        publisher.publish(_messages("x", "q", 1))
