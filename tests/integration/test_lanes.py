"""The simulator's lanes: every command a lane takes gets answered (real broker)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from broker.multiplex import Lane, LaneDelivery, Loop
from broker.settings import BrokerSettings
from tests.integration.helpers import channel, queue_depth, wait_for

pytestmark = pytest.mark.broker

QUEUE = "lanes.client"
REPLIES = "lanes.replies"
COMMANDS = 5


class SlowPublisher(Lane):
    """A lane whose publishing channel opens a while after its consuming one.

    That is what a busy broker or a loaded machine does now and then (the two
    connections open side by side); a lane must not take commands it cannot answer yet.
    """

    def _on_publish_open(self, connection: Any) -> None:
        self._loop.call_later(1.0, lambda: super(SlowPublisher, self)._on_publish_open(connection))


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    thread = threading.Thread(target=loop.run, name="lanes-test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_commands_queued_before_a_lane_can_publish_are_answered_once(
    amqp_url: str, loop: Loop
) -> None:
    connection, ch = channel(amqp_url)
    try:
        ch.queue_declare(QUEUE, durable=True)
        ch.queue_declare(REPLIES, durable=True)
        for n in range(COMMANDS):
            ch.basic_publish("", QUEUE, f"command {n}".encode())
    finally:
        connection.close()

    taken: list[LaneDelivery] = []

    def answer(lane: Lane, delivery: LaneDelivery) -> None:
        taken.append(delivery)
        lane.answer(delivery, ("", REPLIES, b"ack " + delivery.body), dead_letter=False)

    lane = SlowPublisher(BrokerSettings(url=amqp_url), loop, answer, declare=False)
    loop.call_threadsafe(lane.start)
    loop.call_threadsafe(lambda: lane.add(QUEUE))
    try:
        wait_for(lambda: queue_counts(amqp_url)[1] == COMMANDS, 15, "an answer to every command")
    finally:
        loop.call_threadsafe(lane.close)
        wait_for(lambda: lane.closed, 10, "the lane to close")
    # Closed: a delivery the lane never settled would be back in the queue by now.
    assert queue_counts(amqp_url) == (0, COMMANDS), "every command settled after its answer"
    assert len(taken) == COMMANDS, "each command taken once"
    assert not any(d.redelivered for d in taken), "none had to come back to be answered"


def queue_counts(url: str) -> tuple[int, int]:
    """(commands ready in the queue, replies) as the broker has them now."""
    return queue_depth(url, QUEUE), queue_depth(url, REPLIES)


def test_a_lane_reconnecting_while_a_connection_is_still_opening_keeps_its_loop(
    loop: Loop,
) -> None:
    """One node refuses, the other accepts and hangs up a second later without a word:
    the lane restarts while a connection is still in its handshake, and its loop lives on
    to try again."""
    with socket.socket() as silent, socket.socket() as refused:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        accepted: list[socket.socket] = []

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection = silent.accept()[0]
                    accepted.append(connection)
                    threading.Timer(1.0, connection.close).start()

        threading.Thread(target=accept, daemon=True).start()
        urls = ",".join(
            f"amqp://guest:guest@127.0.0.1:{s.getsockname()[1]}/%2F" for s in (refused, silent)
        )
        lane = Lane(BrokerSettings(url=urls), loop, lambda lane, delivery: None)
        loop.call_threadsafe(lane.start)
        try:
            wait_for(lambda: len(accepted) >= 3, 30, "the lane to try the silent node again")
        finally:
            loop.call_threadsafe(lane.close)
            wait_for(lambda: lane.closed, 30, "the lane to close")
