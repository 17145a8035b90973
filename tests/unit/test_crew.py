"""The service's threads end together, and say with the exit status why."""

from __future__ import annotations

import threading

import pytest

from broker.errors import BrokerRefused
from dispatcher.service.crew import EXIT_FAILED, EXIT_REFUSED, Crew, Member


class Worker:
    """Runs until stopped, or does what it is told when told."""

    def __init__(self, outcome: BaseException | None = None) -> None:
        self.go = threading.Event()
        self.stopped = threading.Event()
        self._outcome = outcome

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.go.wait(0.01):
                if self._outcome is not None:
                    raise self._outcome
                return

    def member(self, name: str) -> Member:
        return Member(name, self.run, self.stopped.set)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (None, EXIT_FAILED),
        (RuntimeError("bug"), EXIT_FAILED),
        (BrokerRefused("no", 403), EXIT_REFUSED),
    ],
)
def test_one_member_ending_stops_the_others(outcome: BaseException | None, status: int) -> None:
    crew, ending, steady = Crew(), Worker(outcome), Worker()
    crew.start(ending.member("intake"))
    crew.start(steady.member("collector"))
    ending.go.set()
    assert crew.wait() == status
    assert steady.stopped.is_set()


def test_a_stop_ends_every_member_cleanly() -> None:
    crew, workers = Crew(), [Worker(), Worker()]
    for n, worker in enumerate(workers):
        crew.start(worker.member(f"w{n}"))
    crew.stop()
    assert crew.wait() == 0
    assert all(w.stopped.is_set() for w in workers)
