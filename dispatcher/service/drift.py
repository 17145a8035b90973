"""Client services older than the site's: upgrade drifted clients without waiting for a log-off.

KB Q174961: after a site-wide change to the client services, clients whose users rarely
log off keep running the old services (which write invalid inventory) until client setup
runs again. Agents report their ``CopyListVersion`` in every heartbeat; the site's desired
one is kept in the database (:mod:`dispatcher.store.site`); a client reporting another is
*drifted*. With remediation on, the service's :class:`Remediator` sends each drifted
client that is online the site's upgrade event (``CLISETUP_STARTCYCLE`` by default, which
an agent maps to its client setup program), and the agent's guard defers it while a
software distribution runs (setup restarts the client services).

Each desired version has one storm in the ledger (its id derived from the version and the
event, ``requested_by`` ``drift-remediation``) to which a command is added per drifted
client as it is seen, so ``status STORM_ID``, ``report`` and the storm gauges show the
upgrade's progress. The rules, all read from the ledger:

- a client is upgraded once its queue is provisioned: one heard from a moment ago, whose
  queue the collector is still declaring, waits for a later round rather than get a
  command with nowhere to go;
- at most one command per client and version until that command expires: a client still
  reporting the old version after its command expired (or ran without effect) gets
  another one; an unroutable or nacked command (a queue lost with a rebuilt broker,
  declared again at its agent's next hello) counts as expired ``RETRY_ROUNDS`` rounds on;
- a client that already has a command for the upgrade event pending (sent or deferred,
  not expired: from another version's storm, or an operator's) gets none; the row is
  ``coalesced`` into the pending one, because client setup installs whatever the site
  has when it runs, not a version named in the command;
- the storm runs while the version is the site's and drifted clients remain; it is
  ``done`` when none remain and ``cancelled`` (reason: superseded) when the site's version
  changes. ``setevnt-dispatcher cancel`` on it stops remediation of that version for good.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from broker.errors import BrokerError
from broker.publisher import PublishHooks
from broker.settings import BrokerSettings
from dispatcher.access.keys import Signing
from dispatcher.api.dispatcher import Dispatcher, Receipt
from dispatcher.store.db import DbSettings, StoreConflict, StoreUnavailable
from dispatcher.store.leases import Leases, owner_gone, owner_id
from dispatcher.store.ledger import CommandRecord, Ledger, SentMark, Status, StormRecord, Writes
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.store.site import Site
from dispatcher.storms.storm import CONFIRM_WINDOW, StormOptions, spread_offset
from schemas.catalog import ComponentEvent
from schemas.messages import Command
from schemas.rules import EVENT_NAME_PATTERN

log = logging.getLogger(__name__)

REQUESTED_BY = "drift-remediation"
DEFAULT_UPGRADE_EVENT = "CLISETUP_STARTCYCLE"
CLISETUP_STARTCYCLE = ComponentEvent("CLISETUP", "STARTCYCLE")
# Seconds between rounds. Each round also heartbeats the storm in the ledger, which must
# happen well within progress.STALE_AFTER (10 s) or `status` calls the storm interrupted.
ROUND_EVERY = 1.0
# Bounds of a configured round: short enough for the storm's heartbeat, long enough not to
# spin on the ledger.
ROUND_LIMITS = (0.05, 5.0)
# Rounds before an unroutable or nacked upgrade is tried again: a lost queue is declared
# again at its agent's next hello, and the client should not wait a whole TTL for that.
RETRY_ROUNDS = 10
_RETRIED = frozenset({Status.UNROUTABLE, Status.NACKED})


def parse_event(name: str) -> ComponentEvent:
    """The upgrade event. The dispatcher does not need it in a catalog (agents check that);
    it only has to be a well-formed COMPONENT_EVENT."""
    if not EVENT_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"upgrade event {name!r} is not a COMPONENT_EVENT (e.g. {DEFAULT_UPGRADE_EVENT})"
        )
    component, event = name.split("_")
    return ComponentEvent(component, event)


def requester(version: str) -> str:
    """Who asked, as the storm and its commands say: the remediation, and for which version."""
    return f"{REQUESTED_BY} to {version}"


def storm_id_for(event: ComponentEvent, version: str) -> str:
    """One storm per desired version (and upgrade event): the same id every time."""
    digest = hashlib.sha256(f"{event.name}\0{version}".encode()).hexdigest()[:16]
    return f"upgrade-{digest}"


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    enabled: bool = False
    event: ComponentEvent = CLISETUP_STARTCYCLE
    ttl: float = 3600.0
    spread: float = 0.0  # each client's start offset within it (site servers' load)
    every: float = ROUND_EVERY  # seconds between rounds

    def __post_init__(self) -> None:
        StormOptions(spread=self.spread, ttl=self.ttl)  # the same rules as a storm's
        low, high = ROUND_LIMITS
        if not low <= self.every <= high:
            raise ValueError(f"a remediation round must be {low}-{high} s, not {self.every}")

    def options(self) -> StormOptions:
        return StormOptions(spread=self.spread, ttl=self.ttl, silent=True)


class _Stores(NamedTuple):
    site: Site
    registry: StoreRegistry
    ledger: Ledger
    leases: Leases


class Remediator:
    """Reconciles the fleet with the site's CopyListVersion, on a thread of its own."""

    def __init__(
        self,
        broker: BrokerSettings,
        database: DbSettings,
        registry: RegistrySettings,
        settings: RemediationSettings,
        *,
        hooks: PublishHooks | None = None,
        every: float | None = None,
        signing: Signing | None = None,
    ) -> None:
        self._broker = broker.named("setevnt-remediation")
        self._signing = signing
        self._database = database
        self._registry = registry
        self.settings = settings
        self._hooks = hooks
        self._every = settings.every if every is None else every
        self._stop = threading.Event()
        self._owned: str | None = None  # the storm this process runs
        self._unsent = True  # look for planned rows (left by a failure, or a crash) next round
        self._owner = owner_id()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Reconcile every round until :meth:`stop` (blocking: the service's thread)."""
        stores = _Stores(
            Site(self._database),
            StoreRegistry(self._database, self._registry),
            Ledger(self._database),
            Leases(self._database),
        )
        try:
            while not self._stop.wait(self._every):
                try:
                    self.round(stores, time.time())
                except BrokerError as exc:  # planned commands stay planned: next round
                    log.warning("remediation: broker: %s; trying again", exc)
                except StoreUnavailable as exc:  # locked: next round
                    log.warning("remediation: database: %s; trying again", exc)
        finally:
            for store in stores:
                store.close()

    def round(self, stores: _Stores, now: float) -> None:
        """Start, grow, publish, heartbeat or finish the desired version's storm."""
        desired = stores.site.copylist_version()
        version = desired.value if desired is not None else None
        storm_id = storm_id_for(self.settings.event, version) if version is not None else None
        if self._owned is not None and self._owned != storm_id:
            self._finish(
                stores.ledger, StormState.CANCELLED, f"superseded: site version now {version}"
            )
        if version is None or storm_id is None:
            return
        if stores.registry.census(version, now).drifted == 0:
            left = stores.ledger.storm(storm_id)  # owned, or left running by a stopped service
            if left is not None and self._holds(stores.leases, left, now):
                self._owned = storm_id
                self._finish(
                    stores.ledger, StormState.DONE, f"no client reports other than {version}"
                )
            return
        storm = self._own(stores, storm_id, version, now)
        if storm is None:
            return
        added = self._add(stores, storm, version, now)
        self._publish(stores.ledger, storm, now, added)

    # -- the storm ------------------------------------------------------------------------

    def _own(self, stores: _Stores, storm_id: str, version: str, now: float) -> StormRecord | None:
        """The version's storm, if this service runs it (several remediating services on
        one database: the one holding its lease)."""
        ledger = stores.ledger
        storm = ledger.storm(storm_id)
        if storm is None:
            storm = self._new_storm(storm_id, version, now)
            try:
                ledger.create_storm(storm, [])
            except StoreConflict:  # another service created it first: its storm
                return None
            log.info("remediation: storm %s upgrades clients to %s", storm_id, version)
        elif storm.cancel_requested:  # an operator cancelled it: stay out
            if self._owned == storm_id:
                self._finish(ledger, StormState.CANCELLED, "cancelled by an operator")
            return None
        elif not self._holds(stores.leases, storm, now, revive=True):
            if self._owned == storm_id:
                log.warning("remediation: storm %s taken over by %s", storm_id, storm.owner)
                self._owned = None
            return None
        self._owned = storm_id
        return storm

    def _holds(
        self, leases: Leases, storm: StormRecord, now: float, *, revive: bool = False
    ) -> bool:
        """Whether this service holds the storm's lease, claiming it if it ran out (or, with
        ``revive``, if the storm had ended: drifted clients are back)."""
        if storm.owner == self._owner and storm.state == StormState.RUNNING:
            return True
        if storm.state != StormState.RUNNING and not revive:
            return False
        seen = storm if owner_gone(storm.owner) else None
        return leases.claim(storm.storm_id, self._owner, now, seen=seen, states=list(StormState))

    def _new_storm(self, storm_id: str, version: str, now: float) -> StormRecord:
        return StormRecord(
            storm_id=storm_id,
            component=self.settings.event.component,
            event=self.settings.event.event,
            options=self.settings.options().to_json(),
            targets=0,
            state=StormState.RUNNING,
            reason=None,
            requested_by=requester(version),
            created_at=now,
            finished_at=None,
            heartbeat_at=now,
            owner=self._owner,
            cancel_requested=False,
        )

    def _finish(self, ledger: Ledger, state: str, reason: str) -> None:
        assert self._owned is not None
        ledger.finish_storm(self._owned, state, reason, time.time())
        log.info("remediation: storm %s %s (%s)", self._owned, state, reason)
        self._owned = None

    # -- commands -------------------------------------------------------------------------

    def _add(self, stores: _Stores, storm: StormRecord, version: str, now: float) -> int:
        """A planned command per drifted online client, with a provisioned queue, without
        one that is still live."""
        covered = stores.ledger.unexpired(storm.storm_id, now)
        todo = [
            c.client_id
            for c in stores.registry.drifted(version, online=True, now=now)
            if c.provisioned_at is not None and c.client_id not in covered
        ]
        if not todo:
            return 0
        event = self.settings.event
        pending = stores.ledger.pending(event.component, event.event, now)
        rows = [
            self._row(storm.storm_id, client_id, pending.get(client_id), now) for client_id in todo
        ]
        stores.ledger.add_commands(storm.storm_id, rows, now)
        coalesced = sum(1 for row in rows if row.coalesced_into is not None)
        log.info(
            "remediation: %d drifted client(s) seen on other than %s: %d to upgrade, "
            "%d already have %s pending",
            len(rows),
            version,
            len(rows) - coalesced,
            coalesced,
            event.name,
        )
        return len(rows) - coalesced

    def _row(self, storm_id: str, client_id: str, pending: str | None, now: float) -> CommandRecord:
        event = self.settings.event
        if pending is not None:
            # Live for one TTL, like a command of its own would be; then looked at again.
            return CommandRecord(
                uuid.uuid4().hex,
                storm_id,
                client_id,
                event.component,
                event.event,
                Status.COALESCED,
                expires_at=now + self.settings.ttl,
                coalesced_into=pending,
            )
        offset = spread_offset(storm_id, client_id, self.settings.spread)
        return CommandRecord(
            uuid.uuid4().hex,
            storm_id,
            client_id,
            event.component,
            event.event,
            Status.PLANNED,
            not_before=now + offset if self.settings.spread else None,
        )

    def _publish(self, ledger: Ledger, storm: StormRecord, now: float, added: int) -> None:
        """Send what is planned (new rows, or left by a broker failure or a crash) and
        heartbeat the storm; an operator's cancel request ends it."""
        planned = self._planned(ledger, storm.storm_id) if added or self._unsent else []
        writes = Writes()
        if planned:
            self._unsent = True  # until the confirms are written down
            receipts = self._send(storm, planned, now)
            retry = self._every * RETRY_ROUNDS
            writes.sent = [_sent(receipt, retry) for receipt in receipts]
            writes.publishing_at = now
            log.info(
                "remediation: sent %d %s command(s) of storm %s",
                sum(1 for r in receipts if r.sent),
                storm.component + "_" + storm.event,
                storm.storm_id,
            )
        if ledger.apply(writes, storm.storm_id, time.time()):
            self._finish(ledger, StormState.CANCELLED, "cancelled by an operator")
        self._unsent = False

    def _planned(self, ledger: Ledger, storm_id: str) -> list[CommandRecord]:
        return [c for c in ledger.storm_commands(storm_id) if c.status == Status.PLANNED]

    def _send(
        self, storm: StormRecord, planned: Sequence[CommandRecord], now: float
    ) -> list[Receipt]:
        commands = [
            Command(
                command_id=c.command_id,
                client_id=c.client_id,
                component=storm.component,
                event=storm.event,
                silent=True,
                issued_at=now,
                expires_at=now + self.settings.ttl,
                requested_by=storm.requested_by,
                storm_id=storm.storm_id,
                not_before=c.not_before,
            )
            for c in planned
        ]
        with Dispatcher(
            settings=self._broker,
            name="setevnt-remediation",
            window=CONFIRM_WINDOW,
            hooks=self._hooks,
            record=False,  # its rows are in the ledger already
            signing=self._signing,
        ) as dispatcher:
            return dispatcher.send(commands)


def _sent(receipt: Receipt, retry: float) -> SentMark:
    """A ledger "sent" row. Unroutable and nacked commands were not sent (no sent_at): their
    row expires ``retry`` seconds on (unless the command expires first), when the client
    gets its next one: not every round, and not a whole TTL later."""
    sent_at = receipt.issued_at if receipt.sent else None
    expires_at = receipt.expires_at
    if receipt.status in _RETRIED:
        expires_at = min(expires_at, receipt.issued_at + retry)
    return SentMark(receipt.status, receipt.issued_at, expires_at, sent_at, receipt.command_id)
