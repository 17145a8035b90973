"""Which client components exist, which events they take, and where they run.

The catalog is data: the defaults come from the Set Client Event reference
(CLISVCL, CLISVC95, CCIM32, SMSAPM32, SMSMON32 and Copy Queue), and a site adds its own
components from configuration with :meth:`Catalog.extended`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# Platform families a client reports in its heartbeat. "nt" covers Windows NT 3.51/4.0
# and everything after it (and the Linux/Unix agents that stand in for them);
# "win9x" covers Windows 95/98.
PLATFORMS = ("nt", "win9x")
EVENTS = ("STARTCYCLE", "CLOSE")

# Names are upper case because the original tool's COMPONENT_EVENT is case-sensitive and
# upper case; keeping that rule makes `ccim32_startcycle` an error instead of a guess.
_NAME = re.compile(r"^[A-Z][A-Z0-9]{0,31}$")
_EVENT = re.compile(r"^[A-Z][A-Z0-9]{0,31}$")


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    title: str
    platforms: frozenset[str]
    events: tuple[str, ...] = EVENTS

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"component name {self.name!r} must be upper case letters/digits")
        unknown = set(self.platforms) - set(PLATFORMS)
        if not self.platforms or unknown:
            raise ValueError(
                f"component {self.name}: platforms must be a non-empty subset of {PLATFORMS}"
            )
        for event in self.events:
            if not _EVENT.fullmatch(event):
                raise ValueError(f"component {self.name}: event {event!r} must be upper case")

    def runs_on(self, platform: str) -> bool:
        return platform in self.platforms


@dataclass(frozen=True, slots=True)
class ComponentEvent:
    component: str
    event: str

    @property
    def name(self) -> str:
        return f"{self.component}_{self.event}"

    def __str__(self) -> str:
        return self.name


class Catalog:
    """An immutable set of components, looked up by name or by COMPONENT_EVENT."""

    def __init__(self, components: Iterable[Component]) -> None:
        self._components: dict[str, Component] = {}
        for component in components:
            if component.name in self._components:
                raise ValueError(f"component {component.name} is defined twice")
            self._components[component.name] = component
        self._events = {
            f"{c.name}_{e}": ComponentEvent(c.name, e)
            for c in self._components.values()
            for e in c.events
        }

    def __iter__(self) -> Iterator[Component]:
        return iter(self._components.values())

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def component(self, name: str) -> Component | None:
        return self._components.get(name)

    def event(self, name: str) -> ComponentEvent | None:
        """Look up an exact, case-sensitive COMPONENT_EVENT such as ``CCIM32_STARTCYCLE``."""
        return self._events.get(name)

    def has_event(self, component: str, event: str) -> bool:
        found = self._components.get(component)
        return found is not None and event in found.events

    def event_names(self) -> list[str]:
        return sorted(self._events)

    def extended(self, extra: Iterable[Component]) -> Catalog:
        """A new catalog with site components added (a site may also redefine a default)."""
        merged = dict(self._components)
        for component in extra:
            merged[component.name] = component
        return Catalog(merged.values())

    @staticmethod
    def components_from_config(entries: Iterable[Mapping[str, object]]) -> list[Component]:
        """Build components from ``[[components]]`` tables of a TOML configuration."""
        built = []
        for entry in entries:
            platforms = entry.get("platforms", list(PLATFORMS))
            events = entry.get("events", list(EVENTS))
            if not isinstance(platforms, list) or not isinstance(events, list):
                raise ValueError("components: 'platforms' and 'events' must be lists")
            built.append(
                Component(
                    name=str(entry["name"]),
                    title=str(entry.get("title", entry["name"])),
                    platforms=frozenset(str(p) for p in platforms),
                    events=tuple(str(e) for e in events),
                )
            )
        return built


_BOTH = frozenset(PLATFORMS)

DEFAULT_CATALOG = Catalog(
    [
        Component("CLISVCL", "Client Service NT", frozenset({"nt"})),
        Component("CLISVC95", "Client Service 98/95", frozenset({"win9x"})),
        Component("CCIM32", "Client Configuration Installation Manager", _BOTH),
        Component("SMSAPM32", "Available Programs Manager", _BOTH),
        Component("SMSMON32", "Advertised Programs Monitor", _BOTH),
        Component("CQMGR32", "Copy Queue", _BOTH),
    ]
)
