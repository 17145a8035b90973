"""The agent's watchdog: it leaves once the loop stopped beating for its limit, never
while the loop beats or between sessions (disarmed)."""

from __future__ import annotations

import threading
import time

from agent.watchdog import STALLED_EXIT, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stall_counts_from_the_last_beat_and_only_once_armed() -> None:
    clock = Clock()
    dog = Watchdog(120.0, "agent PC001", leave=lambda status: None, clock=clock)
    clock.now += 500
    assert dog.stalled_for() is None  # never armed: no session yet
    dog.beat()
    clock.now += 119
    assert dog.stalled_for() is None
    clock.now += 2
    assert dog.stalled_for() == 121
    dog.beat()
    assert dog.stalled_for() is None
    clock.now += 300
    dog.disarm()  # between sessions: the supervisor's backoff is not a stall
    assert dog.stalled_for() is None


def test_it_leaves_with_the_stalled_status_once_the_loop_stops_beating() -> None:
    left: list[int] = []
    gone = threading.Event()

    def leave(status: int) -> None:
        left.append(status)
        gone.set()

    dog = Watchdog(0.3, "agent PC001", leave=leave)
    dog.start()
    try:
        dog.beat()
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
            dog.beat()
            time.sleep(0.05)
        dog.disarm()
        time.sleep(2.5)  # disarmed past its limit
    finally:
        dog.close()
    assert left == []
