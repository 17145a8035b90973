"""Signal backends: how the agent makes a local component act."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.backends.base import Backend, BackendConfigError, SignalResult
from agent.backends.exec import ExecBackend
from agent.backends.file import FileBackend
from agent.backends.posix_signal import SignalBackend
from agent.backends.simulated import SimulatedBackend
from agent.backends.win32_event import Win32EventBackend

BACKENDS: dict[str, Any] = {
    "exec": ExecBackend,
    "posix-signal": SignalBackend,
    "file": FileBackend,
    "win32-event": Win32EventBackend,
    "simulated": SimulatedBackend,
}
# Other names a configuration may use: "signal" is what the backend was first called.
ALIASES = {"signal": "posix-signal"}


def make_backend(kind: str, options: Mapping[str, Any]) -> Backend:
    cls = BACKENDS.get(ALIASES.get(kind, kind))
    if cls is None:
        raise BackendConfigError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    backend: Backend = cls.from_options(options)
    return backend


__all__ = ["ALIASES", "BACKENDS", "Backend", "BackendConfigError", "SignalResult", "make_backend"]
