"""Per-requester quotas: requests and targets accepted within a sliding window.

A requester beyond its quota is refused ``rate-limited``, with the quota, its window and
when a retry may pass. Only accepted requests count (a replay or a refusal spends
nothing). Kept in memory by the intake's thread: a requester has at most its
``max_requests`` entries, and only requesters with a policy rule get this far, so memory
stays bounded whatever is sent. A restarted service starts with empty quotas.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from dispatcher.service.policy import Limits
from schemas.durations import format_duration
from schemas.messages import RefusalReason
from schemas.refusals import RequestRefused


@dataclass(frozen=True, slots=True)
class Spent:
    at: float
    targets: int


class Quotas:
    """Used by one thread (the intake's)."""

    def __init__(self) -> None:
        self._spent: dict[str, deque[Spent]] = {}

    def check_requests(self, user: str, limits: Limits, now: float) -> None:
        """Refuse ``rate-limited`` when ``user`` has had its requests for this window."""
        spent = self._recent(user, limits.window, now)
        if len(spent) >= limits.max_requests:
            retry = spent[len(spent) - limits.max_requests].at + limits.window - now
            _limited(
                f"{user} may make max_requests {limits.max_requests} per "
                f"{format_duration(limits.window)}: retry in {format_duration(retry)}"
            )

    def check_targets(self, user: str, count: int, limits: Limits, now: float) -> None:
        """Refuse ``rate-limited`` when ``count`` more targets would exceed the window's."""
        spent = self._recent(user, limits.window, now)
        used = sum(entry.targets for entry in spent)
        over = used + count - limits.max_targets_per_window
        if over <= 0:
            return
        freed, retry = 0, limits.window
        for entry in spent:  # oldest first: when enough of them left the window
            freed += entry.targets
            retry = entry.at + limits.window - now
            if freed >= over:
                break
        _limited(
            f"{user} may target max_targets_per_window {limits.max_targets_per_window} clients "
            f"per {format_duration(limits.window)} ({used} so far, this request {count}): "
            f"retry in {format_duration(retry)}"
        )

    def spend(self, user: str, targets: int, now: float) -> None:
        self._spent.setdefault(user, deque()).append(Spent(now, targets))

    def _recent(self, user: str, window: float, now: float) -> deque[Spent]:
        spent = self._spent.get(user)
        if spent is None:
            return deque()
        while spent and spent[0].at <= now - window:
            spent.popleft()
        if not spent:
            del self._spent[user]
        return spent


def _limited(detail: str) -> NoReturn:
    raise RequestRefused(RefusalReason.RATE_LIMITED, detail)
