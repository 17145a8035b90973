"""Run a configured program per COMPONENT_EVENT (argv, no shell), with a timeout."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult, tail
from schemas.messages import Command


class ExecBackend:
    name = "exec"

    def __init__(self, commands: Mapping[str, Sequence[str]], timeout: float = 300.0) -> None:
        for event, argv in commands.items():
            if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
                raise BackendConfigError(f"exec: {event} needs a non-empty list of strings")
        if timeout <= 0:
            raise BackendConfigError("exec: timeout must be positive")
        self._commands = {event: list(argv) for event, argv in commands.items()}
        self._timeout = timeout

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ExecBackend:
        return cls(dict(options.get("commands", {})), float(options.get("timeout", 300.0)))

    def signal(self, command: Command) -> SignalResult:
        argv = self._commands.get(command.event_name)
        if argv is None:
            return SignalResult(
                False, detail=f"exec: no program configured for {command.event_name}"
            )
        env = {
            **os.environ,
            "SETEVNT_COMMAND_ID": command.command_id,
            "SETEVNT_COMPONENT": command.component,
            "SETEVNT_EVENT": command.event,
            "SETEVNT_SILENT": "1" if command.silent else "0",
        }
        try:
            done = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode("utf-8", "replace")
            return SignalResult(
                False, f"exec: {argv[0]} ran over {self._timeout:g} s", None, tail(output), True
            )
        except OSError as exc:
            return SignalResult(False, detail=f"exec: cannot run {argv[0]}: {exc.strerror}")
        output = tail(done.stdout.decode("utf-8", "replace"))
        if done.returncode != 0:
            detail = f"exec: {argv[0]} exited with status {done.returncode}"
            return SignalResult(False, detail, done.returncode, output)
        return SignalResult(True, f"exec: {argv[0]} exited 0", 0, output)
