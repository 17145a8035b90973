"""What every signal backend provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.messages import Command
from schemas.rules import OUTPUT_MAX


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


def int32_exit_code(code: object) -> int | None:
    """An exit status as a signed 32-bit value (what an ack carries), or None if none fits.

    Windows reports a crash as an NTSTATUS such as 0xC0000005, which Python gives as the
    unsigned 3221225477; Windows tools show it as the signed -1073741819, and so does the
    ack. POSIX statuses (0-255, or minus a signal number) are kept as they are.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    if 2**31 <= code < 2**32:
        return code - 2**32
    return code if -(2**31) <= code < 2**31 else None
