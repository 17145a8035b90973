"""A storm's run gives way when another dispatcher took its lease.

A run that stalled longer than the lease (a frozen process, a database lock held for
long) may find that another dispatcher took its storm over meanwhile. The storm's ledger
thread looks at the owner after its writes, once a second; when it is someone else the
run suspends (publishes nothing more) and leaves the storm's row to its new owner.
"""

from __future__ import annotations

import time

from dispatcher.store.ledger import Ledger

CHECK_EVERY = 1.0  # seconds between looks at the owner


class LeaseWatch:
    """:meth:`check` on the storm's ledger thread; :attr:`lost` read by the run."""

    def __init__(self, storm_id: str, owner: str) -> None:
        self.storm_id = storm_id
        self.owner = owner
        self.lost: str | None = None  # why, once another dispatcher holds the storm
        self._next = 0.0

    def check(self, ledger: Ledger) -> str | None:
        """Why the run must stop, once the storm is no longer this run's."""
        now = time.monotonic()
        if self.lost is None and now >= self._next:
            self._next = now + CHECK_EVERY
            record = ledger.storm(self.storm_id)
            if record is not None and record.owner != self.owner:
                self.lost = f"taken over by {record.owner}"
        return self.lost
