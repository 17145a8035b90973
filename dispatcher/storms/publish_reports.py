"""A storm's publish reports: what it published, told to the service's collector as it goes.

The service counts a storm's commands in ``setevnt_commands_published_total`` only from
these reports. Each one carries the counts since the previous one, every few seconds and
once more when the storm has nothing left to publish: a dashboard sees a storm while it
runs, and a report holds nothing another one holds too. One report is in flight at a
time; it goes out through the storm's own confirming publisher, between its commands.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from broker.publisher import Outcome, Outgoing
from schemas.messages import PublishCount, PublishReport

log = logging.getLogger(__name__)

REPORT_EVERY = 2.0  # seconds between two reports of a storm that is still publishing

Build = Callable[[PublishReport], Outgoing]  # the message of a report (a unique key)


def make_report(publisher: str, counts: Mapping[tuple[str, str, str], int]) -> PublishReport:
    """The report of what ``publisher`` published, counted by (component, event, status)."""
    return PublishReport(
        publisher=publisher,
        published_at=time.time(),
        counts=tuple(PublishCount(c, e, s, n) for (c, e, s), n in sorted(counts.items()) if n),
    )


class PublishReports:
    """Counts a storm's publish outcomes and hands out the reports that are due.

    Used on the storm's publishing thread only (:class:`dispatcher.storms.flow.StormFlow`).
    """

    def __init__(
        self,
        publisher: str,
        component: str,
        event: str,
        build: Build,
        *,
        every: float = REPORT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publisher = publisher
        self._component = component
        self._event = event
        self._build = build
        self._every = every
        self._clock = clock
        self._counts: Counter[Outcome] = Counter()
        self._in_flight: str | None = None  # the key of the report awaiting its confirm
        self._next = clock() + every

    def count(self, outcome: Outcome, commands: int = 1) -> None:
        self._counts[outcome] += commands

    def owed(self) -> bool:
        """Counts not reported yet, or a report not confirmed yet."""
        # Counts only grow, so any entry is one to report (no ``+counter`` copy per call).
        return self._in_flight is not None or bool(self._counts)

    def take(self, *, last: bool) -> Outgoing | None:
        """The report that is due now, if any; ``last``: nothing more will be published,
        so whatever was counted is due at once."""
        now = self._clock()
        if self._in_flight is not None or not self._counts or (not last and now < self._next):
            return None
        counts, self._counts = self._counts, Counter()
        self._next = now + self._every
        report = make_report(
            self._publisher,
            {(self._component, self._event, o.value): n for o, n in counts.items()},
        )
        message = self._build(report)
        self._in_flight = message.key
        return message

    @property
    def in_flight(self) -> str | None:
        """The key of the report awaiting its confirm, if any."""
        return self._in_flight

    def owns(self, key: str) -> bool:
        return key == self._in_flight

    def settled(self, outcome: Outcome) -> None:
        """The broker's answer to the report in flight. Unless it was taken, its counts
        are missing from the service's metrics (the storm's own figures keep them)."""
        if outcome is not Outcome.SENT:
            log.warning("a publish report was %s: the service does not count it", outcome)
        self._in_flight = None
