"""Run a configured program per COMPONENT_EVENT (argv, no shell), with a timeout.

The program gets a minimal environment, not the agent's: the agent's holds the broker
URL with its password (``SETEVNT_AMQP_URL``), and whatever the program runs could read
it. It gets ``PATH``, ``LANG``, ``LC_*`` and ``TZ`` (on Windows also ``SYSTEMROOT``,
``COMSPEC``, ``PATHEXT`` and ``TEMP``), the names listed in ``[backend.exec] env``, and
the command's own ``SETEVNT_COMMAND_ID``, ``SETEVNT_COMPONENT``, ``SETEVNT_EVENT`` and
``SETEVNT_SILENT``; never another ``SETEVNT_*`` variable.

A program that runs over the timeout is killed with every process it started (psutil's
view of its descendants): on Windows killing the program alone leaves its children
running, and on either platform a child still holding the output pipe would keep the
agent waiting after the program is gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from agent.backends.base import BackendConfigError, SignalResult, int32_exit_code, tail
from schemas.messages import Command

PASSED = ("PATH", "LANG", "TZ")
PASSED_ON_WINDOWS = ("SYSTEMROOT", "COMSPEC", "PATHEXT", "TEMP")
PRIVATE_PREFIX = "SETEVNT_"
KILL_WAIT = 5.0  # seconds for the output of a killed tree to drain


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
            child = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(command),
            )
        except OSError as exc:
            return SignalResult(False, detail=f"exec: cannot run {argv[0]}: {exc.strerror}")
        with child:
            try:
                stdout, _ = child.communicate(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                kill_tree(child.pid)
                try:
                    stdout, _ = child.communicate(timeout=KILL_WAIT)
                except subprocess.TimeoutExpired as exc:  # an escaped daemon holds the pipe
                    stdout = exc.output or b""
                output = tail(stdout.decode("utf-8", "replace"))
                detail = f"exec: {argv[0]} ran over {self._timeout:g} s"
                return SignalResult(False, detail, None, output, True)
        return finished(argv[0], child.returncode, stdout)


def finished(program: str, returncode: int, stdout: bytes) -> SignalResult:
    """The result of a program that exited: Windows' unsigned statuses as signed int32."""
    output = tail(stdout.decode("utf-8", "replace"))
    if returncode == 0:
        return SignalResult(True, f"exec: {program} exited 0", 0, output)
    code = int32_exit_code(returncode)
    shown = returncode if code is None else code
    detail = f"exec: {program} exited with status {shown}"
    if code is not None and code != returncode:
        detail += f" (0x{returncode:08X})"
    return SignalResult(False, detail, code, output)


def kill_tree(pid: int) -> None:
    """Kill a process and all its descendants (listed first: once it dies they are orphans)."""
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.Error):  # gone already, or not ours to kill
            process.kill()
    psutil.wait_procs(family, timeout=5)
