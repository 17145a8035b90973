"""The watchdog: it leaves once a watched loop stopped beating for its limit, never while
the loops beat, and never for a loop that is disarmed (between sessions)."""

from __future__ import annotations

import threading
import time

from broker.watchdog import STALLED_EXIT, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stall_counts_from_a_loops_last_beat_and_only_while_it_is_armed() -> None:
    clock = Clock()
    dog = Watchdog(120.0, "agent PC001", leave=lambda status: None, clock=clock)
    clock.now += 500
    assert dog.stalled() is None  # nothing armed yet
    dog.beat("broker")
    clock.now += 119
    assert dog.stalled() is None
    clock.now += 2
    assert dog.stalled() == ("broker", 121)
    dog.beat("broker")
    assert dog.stalled() is None
    clock.now += 300
    dog.disarm("broker")  # between sessions: the supervisor's backoff is not a stall
    assert dog.stalled() is None


def test_each_loop_is_watched_on_its_own() -> None:
    clock = Clock()
    dog = Watchdog(120.0, "serve", leave=lambda status: None, clock=clock)
    dog.beat("intake")
    dog.beat("other")
    for _ in range(3):
        clock.now += 60
        dog.beat("other")  # one loop beating does not cover another
    assert dog.stalled() == ("intake", 180)


def test_it_leaves_with_the_stalled_status_once_a_loop_stops_beating() -> None:
    left: list[int] = []
    gone = threading.Event()

    def leave(status: int) -> None:
        left.append(status)
        gone.set()

    dog = Watchdog(0.3, "agent PC001", leave=leave)
    dog.start()
    try:
        dog.beat("broker")
        assert gone.wait(10), "the watchdog did not act on a stalled loop"
    finally:
        dog.close()
    assert left == [STALLED_EXIT]


def test_a_beating_loop_is_left_alone() -> None:
    left: list[int] = []
    dog = Watchdog(2.0, "agent PC001", leave=left.append)
    dog.start()
    try:
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            dog.beat("broker")
            time.sleep(0.05)
        dog.disarm("broker")
        time.sleep(2.5)  # disarmed past its limit
    finally:
        dog.close()
    assert left == []
