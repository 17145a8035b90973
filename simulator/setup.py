"""Simulated clients' CopyListVersions, and a simulated client setup that changes them.

``setevnt-agent simulate --copylist-version V1 --upgrade-to V2``: every simulated client
reports V1 in its heartbeats until it runs the upgrade event (``CLISETUP_STARTCYCLE``
unless ``--upgrade-event`` says otherwise), after which it reports V2, as a client does
once its setup program installed the site's client services (KB Q174961).
"""

from __future__ import annotations

import threading

from agent.backends.base import Backend, SignalResult
from agent.config import valid_copylist
from schemas.catalog import DEFAULT_CATALOG, PLATFORMS, Catalog, Component
from schemas.messages import Command
from schemas.rules import EVENT_NAME_PATTERN

UPGRADE_EVENT = "CLISETUP_STARTCYCLE"


class CopyLists:
    """Each simulated client's CopyListVersion (read on the I/O loop, written by workers)."""

    def __init__(
        self, initial: str | None, upgrade_to: str | None, event: str = UPGRADE_EVENT
    ) -> None:
        for version in (initial, upgrade_to):
            if version is not None and not valid_copylist(version):
                raise ValueError(f"CopyListVersion {version!r}: 1-64 printable characters")
        if not EVENT_NAME_PATTERN.fullmatch(event):
            raise ValueError(f"--upgrade-event {event!r} is not a COMPONENT_EVENT")
        self._initial = initial
        self._upgrade_to = upgrade_to
        self.event = event
        self._upgraded: set[str] = set()
        self._lock = threading.Lock()

    def version(self, client_id: str) -> str | None:
        with self._lock:
            return self._upgrade_to if client_id in self._upgraded else self._initial

    def catalog(self) -> Catalog:
        """The default catalog, plus the setup component when clients can be upgraded."""
        if self._upgrade_to is None:
            return DEFAULT_CATALOG
        component, event = self.event.split("_")
        setup = Component(component, "Client setup (simulated)", frozenset(PLATFORMS), (event,))
        return DEFAULT_CATALOG.extended([setup])

    def backend(self, inner: Backend) -> Backend:
        return inner if self._upgrade_to is None else _Setup(inner, self)

    def upgraded(self, client_id: str) -> None:
        with self._lock:
            self._upgraded.add(client_id)


class _Setup:
    """The simulated component run, and for the upgrade event the new version afterwards."""

    def __init__(self, inner: Backend, copylists: CopyLists) -> None:
        self.name = inner.name
        self._inner = inner
        self._copylists = copylists

    def signal(self, command: Command) -> SignalResult:
        result = self._inner.signal(command)
        if result.ok and command.event_name == self._copylists.event:
            self._copylists.upgraded(command.client_id)
        return result
