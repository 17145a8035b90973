"""Request storms waiting for a worker, served round-robin across requesters.

One requester's burst must not delay another's request: a free worker takes the oldest
storm of the next requester in turn, skipping requesters that already have their
``max_running`` storms running. Pure threading, no broker: the intake's workers call
:meth:`FairQueue.take` and :meth:`FairQueue.done`, its thread :meth:`FairQueue.put`.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Turn:
    requester: str
    storm_id: str


class FairQueue:
    """Thread-safe; ``running_cap(requester)`` is how many of its storms may run at once."""

    def __init__(self, running_cap: Callable[[str], int]) -> None:
        self._cap = running_cap
        self._changed = threading.Condition()
        # Requesters with storms waiting, in turn order: served ones go to the back.
        self._waiting: dict[str, deque[str]] = {}
        self._running: Counter[str] = Counter()
        self._closed = False

    def put(self, requester: str, storm_id: str) -> None:
        with self._changed:
            self._waiting.setdefault(requester, deque()).append(storm_id)
            self._changed.notify()

    def take(self, timeout: float | None = None) -> Turn | None:
        """The next turn, once one may run; None when closed (or after ``timeout``)."""
        with self._changed:
            turn = None
            while not self._closed and turn is None:
                turn = self._next()
                if turn is None and not self._changed.wait(timeout):
                    break
            return turn

    def done(self, turn: Turn) -> None:
        with self._changed:
            self._running[turn.requester] -= 1
            if self._running[turn.requester] <= 0:
                del self._running[turn.requester]
            self._changed.notify_all()  # a requester at its cap may have a storm waiting

    def close(self) -> list[Turn]:
        """Wake every worker to stop; the turns that never started (still owed)."""
        with self._changed:
            self._closed = True
            left = [Turn(r, s) for r, ids in self._waiting.items() for s in ids]
            self._waiting.clear()
            self._changed.notify_all()
            return left

    def running(self, requester: str) -> int:
        with self._changed:
            return self._running[requester]

    def queued(self) -> list[str]:
        """The storms waiting for their turn, oldest first per requester."""
        with self._changed:
            return [storm_id for ids in self._waiting.values() for storm_id in ids]

    def waiting(self) -> int:
        with self._changed:
            return sum(len(ids) for ids in self._waiting.values())

    def _next(self) -> Turn | None:
        for requester, ids in self._waiting.items():
            if self._running[requester] < max(1, self._cap(requester)):
                storm_id = ids.popleft()
                del self._waiting[requester]
                if ids:
                    self._waiting[requester] = ids  # to the back of the turn order
                self._running[requester] += 1
                return Turn(requester, storm_id)
        return None
