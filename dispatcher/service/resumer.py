"""Operators' storms whose process died, finished by the service (``serve --take-over-storms``).

A storm started with ``setevnt-dispatcher storm`` belongs to that process; when it dies
(killed, host lost) the storm waits for an operator's ``resume``, unless a service runs
with ``--take-over-storms``: its :mod:`dispatcher.service.takeover` wins the storm's lease
and hands it here, and it is resumed on a thread of its own the way ``resume`` does it.
A service that stops leaves such a storm ``interrupted``, for the next one to take.
"""

from __future__ import annotations

import logging
import threading

from broker.broker import Broker
from broker.errors import BrokerError
from broker.settings import BrokerSettings
from dispatcher.access.keys import Signing
from dispatcher.store.db import DbSettings, StoreError
from dispatcher.store.leases import owner_id
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.storms import storm as storms
from dispatcher.storms.flow import StormFlow

log = logging.getLogger(__name__)

SUSPENDED = "the dispatcher service that took it over stopped; another one resumes it"


class Resumer:
    """Runs the storms it is handed until :meth:`stop`."""

    def __init__(
        self,
        broker: BrokerSettings,
        database: DbSettings,
        registry: RegistrySettings,
        signing: Signing | None = None,
    ) -> None:
        self._broker = Broker(broker, name="setevnt-storm")
        self._database = database
        self._registry = registry
        self._signing = signing
        self._threads: list[threading.Thread] = []
        self._flows: dict[str, StormFlow] = {}
        self._stopping = threading.Event()

    def adopt(self, storm_id: str, why: str) -> None:
        """Resume a storm whose lease this process won (from the takeover's thread)."""
        if self._stopping.is_set():
            return  # its lease runs out again: another service takes it
        log.info("resuming storm %s (%s)", storm_id, why)
        thread = threading.Thread(target=self._run, args=(storm_id,), name=f"resume-{storm_id}")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Stop publishing: the storms run here end ``interrupted``, resumable."""
        self._stopping.set()
        for flow in list(self._flows.values()):
            flow.suspend_requested = SUSPENDED
        for thread in self._threads:
            thread.join()
        self._broker.close()

    def _run(self, storm_id: str) -> None:
        with (
            Ledger(self._database) as ledger,
            StoreRegistry(self._database, self._registry) as registry,
        ):
            record = ledger.storm(storm_id)
            if record is None or record.owner != owner_id():
                return
            try:
                flow = storms.run(
                    self._broker,
                    ledger,
                    registry,
                    record,
                    on_flow=self._started,
                    signing=self._signing,
                )
                log.info("storm %s %s (%s)", storm_id, flow.state, flow.reason or "resumed here")
            except (BrokerError, StoreError, ValueError) as exc:  # the ledger says it
                log.error("storm %s: %s", storm_id, exc)
            finally:
                self._flows.pop(storm_id, None)

    def _started(self, flow: StormFlow) -> None:
        if self._stopping.is_set():
            flow.suspend_requested = SUSPENDED
        self._flows[flow.order.storm_id] = flow
