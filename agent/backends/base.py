"""What every signal backend provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.messages import OUTPUT_MAX, Command


class BackendConfigError(ValueError):
    """The backend's configuration cannot work (raised at start-up, not per command)."""


@dataclass(frozen=True, slots=True)
class SignalResult:
    ok: bool
    detail: str | None = None
    exit_code: int | None = None
    output: str | None = None
    timed_out: bool = False


class Backend(Protocol):
    """Makes a local component run an event. Called off pika's I/O thread; may block."""

    name: str

    def signal(self, command: Command) -> SignalResult: ...


def tail(text: str, limit: int = OUTPUT_MAX) -> str:
    return text if len(text) <= limit else text[-limit:]
