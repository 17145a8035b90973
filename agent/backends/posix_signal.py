"""Send a POSIX signal to the pid in a component's pidfile."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult
from schemas.messages import Command


@dataclass(frozen=True, slots=True)
class SignalTarget:
    pidfile: str
    signum: int


class SignalBackend:
    name = "posix-signal"

    def __init__(self, targets: Mapping[str, SignalTarget]) -> None:
        self._targets = dict(targets)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SignalBackend:
        targets = {}
        for event, spec in dict(options.get("events", {})).items():
            if not isinstance(spec, Mapping) or "pidfile" not in spec:
                raise BackendConfigError(f"signal: {event} needs a pidfile")
            targets[event] = SignalTarget(
                str(spec["pidfile"]), _signum(str(spec.get("signal", "USR1")))
            )
        return cls(targets)

    def signal(self, command: Command) -> SignalResult:
        target = self._targets.get(command.event_name)
        if target is None:
            return SignalResult(
                False, detail=f"signal: no pidfile configured for {command.event_name}"
            )
        try:
            with open(target.pidfile, encoding="ascii") as handle:
                pid = int(handle.read().strip())
            if pid <= 0:  # kill(0 or -n) would signal a whole process group, maybe ours
                raise ValueError(f"pid {pid} is not a process id")
            os.kill(pid, target.signum)
        except (OSError, ValueError) as exc:
            return SignalResult(False, detail=f"signal: {target.pidfile}: {exc}")
        name = signal.Signals(target.signum).name
        return SignalResult(True, detail=f"signal: sent {name} to pid {pid}")


def _signum(name: str) -> int:
    wanted = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    try:
        return int(signal.Signals[wanted])
    except KeyError:
        raise BackendConfigError(f"signal: unknown signal {name!r}") from None
