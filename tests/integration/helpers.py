"""Helpers for tests that run real agent processes against the real broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pika

from broker import topology
from schemas.codec import decode_any
from schemas.messages import Ack

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class NotStopped(subprocess.TimeoutExpired):
    """A process still running after SIGTERM and a wait: says what it last said."""

    def __init__(self, cmd: Any, timeout: float, said: str) -> None:
        super().__init__(cmd, timeout)
        self.said = said

    def __str__(self) -> str:
        return f"{super().__str__()} after SIGTERM; it last said:\n{self.said}"


class Process:
    """A child process whose output is collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._signalled = False  # SIGTERM sent once: a second one may cut a graceful stop short
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 15.0, after: int = 0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and not any(text in x for x in self.lines[after:]):
                raise AssertionError(f"{self.argv} exited {self.proc.returncode}:\n{self.output}")
            return any(text in line for line in self.lines[after:])

        wait_for(seen, timeout, f"{text!r} from {self.argv[2:]}\n{self.output}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def signal_stop(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting; :meth:`terminate` then waits."""
        if self.proc.poll() is None and not self._signalled:
            self.proc.send_signal(signal.SIGTERM)
            self._signalled = True

    def terminate(self, timeout: float = 15.0) -> int:
        self.signal_stop()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise NotStopped(exc.cmd, timeout, self._stacks()) from exc
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._close()

    def _stacks(self, wait: float = 2.0) -> str:
        """The last lines the process wrote, with its threads' stacks if it prints them on
        SIGUSR1 (the agent and the service do)."""
        seen = len(self.lines)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait
        while (
            time.monotonic() < deadline
            and self.proc.poll() is None  # a process without the dump dies of SIGUSR1
            and not any("most recent call first" in line for line in self.lines[seen:])
        ):
            time.sleep(0.05)
        time.sleep(0.2)  # the rest of the dump
        return "\n".join(self.lines[-120:])

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_all(processes: Iterable[Process], timeout: float = 15.0) -> None:
    """Stop the processes together: all are asked first, so their graceful stops overlap
    instead of adding up."""
    stopping = list(processes)
    for process in stopping:
        process.signal_stop()
    for process in stopping:
        process.terminate(timeout)


def start_agent(
    url: str,
    client_id: str,
    tmp: Path,
    *,
    simulated: dict[str, Any] | None = None,
    extra_toml: str = "",
    agent_toml: str = "",
) -> Process:
    """Start ``setevnt-agent run`` on the simulated backend and wait until it consumes.

    ``agent_toml`` goes into the config's ``[agent]`` table, ``extra_toml`` before it.

    Unless ``extra_toml`` brings its own ``[guard]``, the agent gets a private lock and no
    process probe, so an apt or dpkg run on this machine cannot defer a test's commands.
    """
    options = {"duration": 0.01, "record": str(tmp / f"{client_id}.record"), **(simulated or {})}
    if "[guard]" not in extra_toml:
        extra_toml += "\n" + guard_toml(tmp, client_id)
    if "[security]" not in extra_toml:
        extra_toml += "\n" + security_toml()
    config = tmp / f"{client_id}.toml"
    config.write_text(
        f'client_id = "{client_id}"\n'
        f"{extra_toml}\n"
        "[agent]\n"
        f'journal = "{tmp / (client_id + ".journal")}"\n'
        f"{agent_toml}\n"
        "[backend]\n"
        'type = "simulated"\n'
        "[backend.simulated]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in options.items())
    )
    agent = Process(
        [sys.executable, "-m", "agent", "--log-level", "INFO", "run", "--config", str(config)],
        env={"SETEVNT_AMQP_URL": url},
    )
    agent.wait_line(f"agent {client_id} consuming {topology.client_queue(client_id)}")
    return agent


def security_toml() -> str:
    """The ``[security]`` table test agents run with: trust the test dispatcher's key."""
    from dispatcher.access import keys

    signer = keys.load()
    assert signer is not None, "the dispatcher_signing_key fixture sets the key file"
    return f'[security]\ndispatcher_public_key = "{signer.public_text()}"\n'


def signed(body: bytes) -> dict[str, str]:
    """Signature headers for a command body, as the test dispatcher would send them."""
    from dispatcher.access import keys

    signer = keys.load()
    assert signer is not None
    return signer.headers(body)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


def records(path: Path) -> list[dict[str, Any]]:
    """The simulated backend's records so far: complete lines only.

    Agents append while tests poll, so the last line may still be half written;
    it becomes a record once its newline lands.
    """
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def channel(url: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def drain(url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message from ``queue``: (properties, body) each."""
    connection, ch = channel(url)
    taken = []
    try:
        while True:
            method, properties, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))
    finally:
        connection.close()


def drain_acks(url: str, queue: str = topology.ACK_QUEUE) -> list[Ack]:
    """Take every message from the durable ack queue and return the acks."""
    messages = (decode_any(body) for _properties, body in drain(url, queue))
    return [message for message in messages if isinstance(message, Ack)]


def queue_depth(url: str, queue: str) -> int:
    connection, ch = channel(url)
    try:
        return int(ch.queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def collect_acks(url: str, want: Callable[[list[Ack]], bool], timeout: float) -> list[Ack]:
    """Accumulate acks from the durable ack queue until ``want(acks)`` or timeout."""
    seen: list[Ack] = []

    def enough() -> bool:
        seen.extend(drain_acks(url))
        return want(seen)

    wait_for(enough, timeout, "acks")
    return seen


def final(acks: Iterable[Ack], command_id: str) -> list[Ack]:
    return [a for a in acks if a.command_id == command_id and a.final]


def agent_connections(vhost: str, client_id: str) -> list[str]:
    from tests.conftest import management

    quoted = urllib.parse.quote(vhost, safe="")
    names = []
    for conn in management("GET", f"/vhosts/{quoted}/connections") or []:
        name = (conn.get("client_properties") or {}).get("connection_name", "")
        if name.startswith(f"setevnt-agent {client_id}"):
            names.append(conn["name"])
    return names


# -- the distribution guard -----------------------------------------------------------------


def guard_toml(tmp: Path, client_id: str, **settings: Any) -> str:
    """A ``[guard]`` table for ``start_agent(extra_toml=...)``: a private lock and spool."""
    values = {
        "probes": ["lock"],
        "lock": str(tmp / "distribution.lock"),
        "spool": str(tmp / f"{client_id}.spool"),
        **settings,
    }
    return "[guard]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def start_hold(lock: Path, *argv: str) -> Process:
    """Run ``setevnt-agent hold --lock LOCK -- ARGV`` and wait until it holds the lock."""
    from agent.guard import lock_holders

    process = Process([sys.executable, "-m", "agent", "hold", "--lock", str(lock), "--", *argv])

    def holding() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"hold exited {process.proc.returncode}:\n{process.output}")
        return lock.exists() and process.proc.pid in lock_holders(lock)

    wait_for(holding, 10, f"hold {argv} to take {lock}")
    return process


def spooled(directory: Path) -> list[str]:
    """The deferred-command files in an agent's spool, in arrival order."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".cmd"))
