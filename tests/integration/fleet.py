"""Helpers for the fleet tests: the dispatcher service, simulated fleets, the operator CLI.

Everything runs as the operator would run it (real processes against the test's own
vhost); :class:`Fleet` stops what it started, and the database lives in the test's
temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.config import PUBLIC_KEY_ENV
from dispatcher.access import keys
from dispatcher.store.db import DbSettings
from dispatcher.store.registry import StoreRegistry
from schemas.messages import Heartbeat
from tests.integration.helpers import ROOT, Process, records, stop_all, wait_for
from tests.integration.monitoring import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class Fleet:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.db = tmp / "setevnt.db"
        self.env = {"SETEVNT_AMQP_URL": url, "SETEVNT_DB": str(self.db)}
        signer = keys.load()  # the session's dispatcher key: simulated agents trust it
        if signer is not None:
            self.env[PUBLIC_KEY_ENV] = signer.public_text()
        self._processes: list[Process] = []

    # -- processes ----------------------------------------------------------------------

    def serve(self, *extra: str) -> Process:
        """``setevnt-dispatcher serve``: registry, provisioning, ledger, collector."""
        argv = [sys.executable, "-m", "dispatcher", "serve", "--metrics-port", "0", *extra]
        process = self._start(argv)
        process.wait_line("collecting acks", timeout=20)
        return process

    def simulate(self, clients: int, *extra: str, prefix: str = "SIM") -> Process:
        """``setevnt-agent simulate``, waiting until every client consumes its queue."""
        argv = [sys.executable, "-m", "agent", "simulate", "--clients", str(clients)]
        argv += ["--prefix", prefix, "--duration", "0.01", *extra]
        process = self._start(argv)
        process.wait_line(f"all {clients} clients consuming", timeout=60)
        return process

    def start_storm(self, *args: str) -> Process:
        """``setevnt-dispatcher storm ARGS --yes``, left running; :func:`storm_id_of` its
        lines (confirmed: a test's fleet is there to be stormed)."""
        return self._start([sys.executable, "-m", "dispatcher", "storm", *args, "--yes"])

    def _start(self, argv: list[str]) -> Process:
        process = Process(argv, env=self.env)
        self._processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process, newest first, together (:func:`stop_all`)."""
        stop_all(reversed(self._processes), timeout=20)
        self._processes.clear()

    # -- commands -----------------------------------------------------------------------

    def dispatcher(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return _run([sys.executable, "-m", "dispatcher", *args], self.env, timeout)

    def setevnt(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([sys.executable, "-m", "dispatcher.cli.setevnt", *args], self.env, timeout)

    def storm(self, *args: str) -> tuple[int, dict[str, Any]]:
        """Run a storm to its end; (exit code, its --json outcome)."""
        done = self.dispatcher("storm", *args, "--json", "--yes")
        assert done.stdout.strip(), done.stderr
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    def status(self, ident: str) -> dict[str, Any]:
        shown = self.dispatcher("status", ident, "--json")
        assert shown.returncode == 0, shown.stderr
        result: dict[str, Any] = json.loads(shown.stdout)
        return result

    def clients(self, *args: str) -> list[dict[str, Any]]:
        shown = self.dispatcher("clients", "--json", *args)
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]

    # -- the registry, written directly (clients that exist but run no agent) ----------

    def register(
        self, client_ids: list[str], *, age: float = 0.0, groups: tuple[str, ...] = ()
    ) -> None:
        beats = [
            (
                Heartbeat(
                    client_id=c,
                    kind="heartbeat",
                    sent_at=time.time(),
                    platform="nt",
                    agent_version="0.1.0",
                    groups=groups,
                ),
                time.time() - age,
            )
            for c in client_ids
        ]
        with StoreRegistry(DbSettings(str(self.db))) as registry:
            registry.record(beats)


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def storm_id_of(process_lines: Iterable[str]) -> str | None:
    """The storm id a ``setevnt-dispatcher storm`` process announced on stderr."""
    for line in process_lines:
        if line.startswith("storm storm-"):
            return line.split()[1].rstrip(":")
    return None


def runs(record: Path) -> dict[str, list[str]]:
    """Client id -> command ids it finished running, from the simulator's record file."""
    done: dict[str, list[str]] = {}
    for entry in records(record):
        if entry["phase"] == "finish":
            done.setdefault(entry["client_id"], []).append(entry["command_id"])
    return done


def starts(record: Path) -> dict[str, float]:
    """Command id -> when its run started (wall clock)."""
    return {e["command_id"]: e["t"] for e in records(record) if e["phase"] == "start"}


def wait_runs(record: Path, count: int, timeout: float = 30) -> dict[str, list[str]]:
    def enough() -> dict[str, list[str]] | None:
        done = runs(record)
        return done if sum(len(v) for v in done.values()) >= count else None

    result: dict[str, list[str]] = wait_for(enough, timeout, f"{count} finished runs")
    return result


class PrivateNode:
    """A throwaway RabbitMQ node beside the machine's broker, for tests that restart it.

    Own node name, ports, data and cookie (HOME) in a temporary directory; never joined
    to, and never touching, the machine's broker. Its data survives :meth:`restart`
    (durable queues come back, transient messages do not), as on a real broker.
    """

    def __init__(self, directory: Path) -> None:
        if not Path(RABBITMQ_SERVER).exists():
            raise FileNotFoundError("rabbitmq-server is needed for a private node")
        self.port = free_port()
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        self._env = {
            "HOME": str(directory),  # its own Erlang cookie
            "RABBITMQ_NODENAME": f"setevnt-restart-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(directory / "pid"),
        }
        self._pid_file = directory / "pid"
        self.process: Process | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> None:
        self.process = Process([RABBITMQ_SERVER], env=self._env)
        self.process.wait_line("Starting broker... completed", timeout=90)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(timeout=60)
            self.process = None

    def discard(self) -> None:
        """SIGKILL the node (its Erlang VM, then its launcher) once a test is done with it:
        its data is thrown away, so a graceful stop would keep nothing."""
        if self.process is not None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self._pid_file.read_text().strip()), signal.SIGKILL)
            self.process.kill()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
