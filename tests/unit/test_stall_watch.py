"""The collector's stall watch: consume again when nothing comes while messages wait."""

from __future__ import annotations

import time
from typing import cast

import pytest

from broker.consumer import Consumer
from broker.errors import ConnectionLost
from dispatcher.service.collector import StallWatch


class Counted:
    """Stands in for a consumer's queue counts (no broker behaviour is involved)."""

    def __init__(self, waiting: int) -> None:
        self.waiting_now = waiting
        self.asked = 0

    def waiting(self, queue: str) -> int:
        self.asked += 1
        return self.waiting_now


def test_nothing_delivered_while_messages_wait_is_a_stall() -> None:
    watch, queues = StallWatch(after=0.05), Counted(3)
    consumer = cast(Consumer, queues)
    watch.check(0, consumer)
    watch.check(0, consumer)
    assert queues.asked == 0  # not yet: too soon to tell
    time.sleep(0.06)
    with pytest.raises(ConnectionLost, match="6 message"):
        watch.check(0, consumer)


def test_deliveries_or_empty_queues_are_no_stall() -> None:
    watch, queues = StallWatch(after=0.05), Counted(0)
    consumer = cast(Consumer, queues)
    watch.check(0, consumer)
    time.sleep(0.06)
    watch.check(0, consumer)  # quiet and nothing waits: fine
    assert queues.asked == 2
    queues.waiting_now = 5
    for n in range(1, 4):  # deliveries keep coming: the queues are not even counted
        time.sleep(0.03)
        watch.check(n, consumer)
    assert queues.asked == 2
