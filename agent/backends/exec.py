"""Run a configured program per COMPONENT_EVENT (argv, no shell), with a timeout.

The program gets a minimal environment, not the agent's: the agent's holds the broker
URL with its password (``SETEVNT_AMQP_URL``), and whatever the program runs could read
it. It gets ``PATH``, ``LANG``, ``LC_*`` and ``TZ`` (on Windows also ``SYSTEMROOT``,
``COMSPEC``, ``PATHEXT`` and ``TEMP``), the names listed in ``[backend.exec] env``, and
the command's own ``SETEVNT_COMMAND_ID``, ``SETEVNT_COMPONENT``, ``SETEVNT_EVENT`` and
``SETEVNT_SILENT``; never another ``SETEVNT_*`` variable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult, int32_exit_code, tail
from schemas.messages import Command

PASSED = ("PATH", "LANG", "TZ")
PASSED_ON_WINDOWS = ("SYSTEMROOT", "COMSPEC", "PATHEXT", "TEMP")
PRIVATE_PREFIX = "SETEVNT_"


class ExecBackend:
    name = "exec"

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        timeout: float = 300.0,
        env: Sequence[str] = (),
    ) -> None:
        for event, argv in commands.items():
            if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
                raise BackendConfigError(f"exec: {event} needs a non-empty list of strings")
        if timeout <= 0:
            raise BackendConfigError("exec: timeout must be positive")
        if isinstance(env, str) or not all(isinstance(n, str) and n for n in env):
            raise BackendConfigError('exec: env must be a list of variable names, e.g. ["HOME"]')
        private = [n for n in env if n.upper().startswith(PRIVATE_PREFIX)]
        if private:
            raise BackendConfigError(
                f"exec: env may not pass {', '.join(private)}: the agent's own settings "
                "(the broker password among them) stay out of programs"
            )
        self._commands = {event: list(argv) for event, argv in commands.items()}
        self._timeout = timeout
        self._passed = tuple(env)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ExecBackend:
        return cls(
            dict(options.get("commands", {})),
            float(options.get("timeout", 300.0)),
            list(options.get("env", [])),
        )

    def environment(self, command: Command) -> dict[str, str]:
        """What the program's environment holds: little of the agent's, and the command."""
        names = PASSED + (PASSED_ON_WINDOWS if os.name == "nt" else ()) + self._passed
        env = {name: os.environ[name] for name in names if name in os.environ}
        env.update((k, v) for k, v in os.environ.items() if k.startswith("LC_"))
        env.update(
            SETEVNT_COMMAND_ID=command.command_id,
            SETEVNT_COMPONENT=command.component,
            SETEVNT_EVENT=command.event,
            SETEVNT_SILENT="1" if command.silent else "0",
        )
        return env

    def signal(self, command: Command) -> SignalResult:
        argv = self._commands.get(command.event_name)
        if argv is None:
            return SignalResult(
                False, detail=f"exec: no program configured for {command.event_name}"
            )
        try:
            done = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(command),
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
            code = int32_exit_code(done.returncode)
            shown = done.returncode if code is None else code
            detail = f"exec: {argv[0]} exited with status {shown}"
            if code is not None and code != done.returncode:
                detail += f" (0x{done.returncode:08X})"
            return SignalResult(False, detail, code, output)
        return SignalResult(True, f"exec: {argv[0]} exited 0", 0, output)
