"""The original tool's syntax: ``setevnt [/q] [cq | COMPONENT_EVENT]``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.catalog import DEFAULT_CATALOG, Catalog, ComponentEvent

# With no argument the tool cycles CCIM and Copy Queue, as SetEvnt.exe did.
DEFAULT_EVENTS = (ComponentEvent("CCIM32", "STARTCYCLE"), ComponentEvent("CQMGR32", "STARTCYCLE"))
COPY_QUEUE_EVENT = ComponentEvent("CQMGR32", "STARTCYCLE")


class UsageError(ValueError):
    """The words given do not form a valid ``setevnt`` invocation."""


@dataclass(frozen=True, slots=True)
class Invocation:
    events: tuple[ComponentEvent, ...]
    silent: bool


def parse_invocation(words: Sequence[str], catalog: Catalog = DEFAULT_CATALOG) -> Invocation:
    silent = False
    rest: list[str] = []
    for word in words:
        if word in ("/q", "/Q"):
            silent = True
        else:
            rest.append(word)
    if len(rest) > 1:
        raise UsageError(f"expected at most one of 'cq' or COMPONENT_EVENT, got {' '.join(rest)!r}")
    if not rest:
        return Invocation(DEFAULT_EVENTS, silent)
    word = rest[0]
    if word == "cq":
        return Invocation((COPY_QUEUE_EVENT,), silent)
    found = catalog.event(word)
    if found is None:
        raise UsageError(_unknown_event_message(word, catalog, shortcuts="cq, "))
    return Invocation((found,), silent)


def resolve_event(name: str, catalog: Catalog = DEFAULT_CATALOG) -> ComponentEvent:
    """Look up one COMPONENT_EVENT, raising :class:`UsageError` that lists the valid ones."""
    found = catalog.event(name)
    if found is None:
        raise UsageError(_unknown_event_message(name, catalog))
    return found


def _unknown_event_message(word: str, catalog: Catalog, shortcuts: str = "") -> str:
    valid = ", ".join(catalog.event_names())
    hint = ""
    if catalog.event(word.upper()) is not None:
        hint = f" (COMPONENT_EVENT is case-sensitive: did you mean {word.upper()}?)"
    return f"unknown COMPONENT_EVENT {word!r}{hint}; valid: {shortcuts}{valid}"
