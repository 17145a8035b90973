"""SetEvent on a named kernel event, as SetEvnt.exe did. Importable anywhere; Windows only."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult
from schemas.messages import Command

EVENT_MODIFY_STATE = 0x0002


class Win32EventBackend:
    name = "win32-event"

    def __init__(self, names: Mapping[str, str] | None = None, prefix: str = "") -> None:
        if os.name != "nt":  # not sys.platform: mypy would skip the rest as unreachable
            raise BackendConfigError("win32-event: this backend works on Windows only")
        self._names = dict(names or {})
        self._prefix = prefix

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Win32EventBackend:
        return cls(dict(options.get("names", {})), str(options.get("prefix", "")))

    def event_name(self, command: Command) -> str:
        return self._names.get(command.event_name, f"{self._prefix}{command.event_name}")

    def signal(self, command: Command) -> SignalResult:  # pragma: no cover - Windows only
        import ctypes

        if sys.platform != "win32":
            return SignalResult(False, detail="win32-event: Windows only")
        kernel32 = ctypes.windll.kernel32
        name = self.event_name(command)
        handle = kernel32.OpenEventW(EVENT_MODIFY_STATE, False, name)
        if not handle:
            return SignalResult(
                False, detail=f"win32-event: cannot open {name}: {kernel32.GetLastError()}"
            )
        try:
            if not kernel32.SetEvent(handle):
                return SignalResult(False, detail=f"win32-event: SetEvent {name} failed")
        finally:
            kernel32.CloseHandle(handle)
        return SignalResult(True, detail=f"win32-event: set {name}")
