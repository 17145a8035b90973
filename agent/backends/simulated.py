"""Built-in fake components for demos and load tests.

Each run is recorded as JSON lines (``start`` and ``finish``) in an optional record
file, which is what tests read to know exactly what was signalled and how often.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult
from schemas.messages import Command


class SimulatedBackend:
    name = "simulated"

    def __init__(
        self,
        duration: float = 0.02,
        durations: Mapping[str, float] | None = None,
        failure_rate: float = 0.0,
        record: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise BackendConfigError("simulated: failure_rate must be between 0 and 1")
        if duration < 0 or any(v < 0 for v in (durations or {}).values()):
            raise BackendConfigError("simulated: durations must not be negative")
        self._duration = duration
        self._durations = dict(durations or {})
        self._failure_rate = failure_rate
        self._random = random.Random(seed)
        self._record = record
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SimulatedBackend:
        return cls(
            duration=float(options.get("duration", 0.02)),
            durations={str(k): float(v) for k, v in dict(options.get("durations", {})).items()},
            failure_rate=float(options.get("failure_rate", 0.0)),
            record=options.get("record"),
            seed=options.get("seed"),
        )

    def signal(self, command: Command) -> SignalResult:
        seconds = self._durations.get(
            command.event_name, self._durations.get(command.component, self._duration)
        )
        self._write(command, "start")
        time.sleep(seconds)
        with self._lock:
            failed = self._random.random() < self._failure_rate
        self._write(command, "finish", failed=failed)
        if failed:
            return SignalResult(False, detail=f"simulated {command.component} failure")
        return SignalResult(True, detail=f"simulated {command.event_name} ran {seconds:.3f} s")

    def _write(self, command: Command, phase: str, failed: bool = False) -> None:
        if self._record is None:
            return
        line = json.dumps(
            {
                "phase": phase,
                "command_id": command.command_id,
                "client_id": command.client_id,
                "event": command.event_name,
                "silent": command.silent,
                "failed": failed,
                "t": time.time(),
                "pid": os.getpid(),
            }
        )
        with self._lock, open(self._record, "a", encoding="utf-8") as out:
            out.write(line + "\n")
