"""Takeover: request storms whose dispatcher service is gone, finished by another one.

Every ``serve`` looks every :data:`TAKEOVER_EVERY` seconds at the request storms the
database says a service still owes (:mod:`dispatcher.store.owed`). One whose lease ran
out (its owner's heartbeat is older than :data:`dispatcher.store.leases.LEASE`, or its
owner's process is gone from this host, or its owner stopped and let it go) is claimed
with a compare-and-set, so exactly one service wins it, and handed to that service's
intake: a run that had not ended is resumed the way ``resume`` does it (only commands
never confirmed are sent, with their original ids), an ended one gets its summary sent.
The first look, as the service starts, is how a restarted service finishes what it owed.

Storms an operator started (``storm``) are the operator's to ``resume``, unless the
service runs with ``--take-over-storms``: then one whose process died (its lease ran out,
or its process is gone from this host) is claimed the same way and resumed by
:mod:`dispatcher.service.resumer`. Drift remediation's storm is taken by the next
remediating service's own round.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from dispatcher.service.drift import REQUESTED_BY
from dispatcher.store.db import DbSettings, StoreUnavailable
from dispatcher.store.leases import TAKEN_OVER, Leases, owner_gone, owner_id
from dispatcher.store.ledger import Ledger, StormRecord
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.owed import Owed

log = logging.getLogger(__name__)

TAKEOVER_EVERY = 2.0  # seconds between looks: a dead service's storms wait at most this more


class Adopter(Protocol):
    def adopt(self, storm_id: str, why: str) -> None: ...


class Takeover:
    """A member of the service's crew; :meth:`run` blocks until :meth:`stop`."""

    def __init__(
        self,
        database: DbSettings,
        adopter: Adopter,
        *,
        every: float = TAKEOVER_EVERY,
        operators: Adopter | None = None,
    ) -> None:
        self._database = database
        self._adopter = adopter
        self._operators = operators  # None: operators' storms wait for `resume`
        self._every = every
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        with (
            Ledger(self._database) as ledger,
            Leases(self._database) as leases,
            Owed(self._database) as owed,
        ):
            while True:
                try:
                    self.scan(ledger, leases, owed, time.time())
                except StoreUnavailable as exc:  # locked: next look
                    log.warning("takeover: database: %s; trying again", exc)
                if self._stop.wait(self._every):
                    return

    def scan(self, ledger: Ledger, leases: Leases, owed: Owed, now: float) -> list[str]:
        """Claim every storm to take over that nobody holds; the ids this process won."""
        requests = owed.storms()
        won = self._take_all(ledger, leases, list(requests), self._adopter, now)
        if self._operators is not None:
            others = [s for s in leases.candidates(now) if s not in requests]
            won += self._take_all(ledger, leases, others, self._operators, now)
        return won

    def _take_all(
        self, ledger: Ledger, leases: Leases, storm_ids: list[str], to: Adopter, now: float
    ) -> list[str]:
        me = owner_id()
        won = []
        for storm_id in storm_ids:
            record = ledger.storm(storm_id)
            if record is None or record.owner == me or _remediation(record):
                continue
            if _take(leases, record, me, now):
                why = f"taken over from {record.owner}: {record.reason or 'its lease ran out'}"
                log.info("storm %s %s", storm_id, why)
                to.adopt(storm_id, why)
                won.append(storm_id)
        return won


def _remediation(record: StormRecord) -> bool:
    """Drift remediation's storm: the remediating service's round takes it."""
    return record.requested_by.startswith(REQUESTED_BY)


def _take(leases: Leases, record: StormRecord, me: str, now: float) -> bool:
    """Win the storm's lease if it ran out: its run to resume, or its summary to send."""
    gone = owner_gone(record.owner)
    seen = record if gone else None
    if record.state not in TAKEN_OVER:
        return leases.adopt(record.storm_id, me, now, seen=seen)
    expired = gone or now - record.heartbeat_at > leases.lease
    if record.state == StormState.RUNNING and not expired:
        return False
    return leases.claim(record.storm_id, me, now, seen=seen)
