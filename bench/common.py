"""Shared bench plumbing: a throwaway vhost on the local broker, process RSS, a clean
stop when the bench is terminated, and ports for the nodes the benches and tests start."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from broker.errors import ConnectionLost
from broker.management import Management, NotFound

ROOT = Path(__file__).resolve().parents[1]
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_LOW = 32768  # the kernel's default, where the range cannot be read
PORTS_BELOW = 12_000  # how many ports under the ephemeral range to choose from


def free_port() -> int:
    """A free port on 127.0.0.1 that no outgoing connection can be given meanwhile.

    A node's listener closes and opens again on the same port (a cluster join's
    stop_app/start_app, a restart after a kill); a port from the kernel's ephemeral range
    can be handed in between to some connection's local end, and the listener then fails
    with eaddrinuse. So the port comes from below that range, checked free.
    """
    low = _ephemeral_low()
    floor = max(1024, low - PORTS_BELOW)
    for _ in range(200):
        port = random.randrange(floor, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {floor} and {low}")


def _ephemeral_low() -> int:
    try:
        return int(PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LINUX_EPHEMERAL_LOW


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that a terminated bench still stops the nodes,
    services and simulators it started and deletes its scratch vhost and data."""

    def terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


LOCAL_AMQP = "127.0.0.1:5672"
LOCAL_MANAGEMENT = "http://127.0.0.1:15672"
# Deleting a vhost with 10,000 queues took 20-40 s here, and one with a cluster test's
# queues over three nodes more than 30 s on a loaded machine: longer than a request's
# timeout.
DELETE_WAIT = 300.0


@contextlib.contextmanager
def scratch_vhost(
    prefix: str, amqp_address: str = LOCAL_AMQP, management_url: str = LOCAL_MANAGEMENT
) -> Iterator[str]:
    """Yield an AMQP URL for a new vhost that is deleted afterwards.

    Vhosts left by an earlier run that was killed are deleted first: their queues would
    load the broker (and its file-handle cache) during this run's measurements.
    """
    # The project's own management-API client, as the broker's administrator.
    management = Management(management_url, "guest", "guest", timeout=30).call
    for vhost in management("GET", "/vhosts?columns=name") or []:
        if vhost["name"].startswith(f"{prefix}-"):
            print(f"bench: deleting {vhost['name']}, left by an earlier run", file=sys.stderr)
            delete_vhost(management, vhost["name"])
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    management("PUT", f"/vhosts/{name}")
    try:
        management(
            "PUT", f"/permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
        yield f"amqp://guest:guest@{amqp_address}/{name}"
    finally:
        delete_vhost(management, name)


def delete_vhost(management: Callable[..., Any], name: str) -> None:
    """Delete ``name`` and wait until it is gone, however long the broker takes."""
    deadline = time.monotonic() + DELETE_WAIT
    while True:
        try:
            management("DELETE", f"/vhosts/{name}")
            return
        except NotFound:
            return  # gone: an earlier request timed out client-side but went through
        except ConnectionLost as exc:
            if time.monotonic() > deadline:
                raise
            print(f"vhost {name} still being deleted ({exc})", file=sys.stderr)
            time.sleep(5)


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate, and kill what is still there after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def agent_argv(client_id: str, journal: str) -> list[str]:
    """`setevnt-agent run` for one client on the simulated backend."""
    return [sys.executable, "-m", "agent", "run", "--client", client_id,
            "--backend", "simulated", "--journal", journal]  # fmt: skip


def agent_ready(client_id: str) -> str:
    """The agent's log line once it consumes (an error naming the queue does not match)."""
    return f"agent {client_id} consuming"


def wait_line(output: IO[str], text: str) -> None:
    """Read a child's output until a line contains ``text``."""
    for line in output:
        if text in line:
            return
    raise RuntimeError(f"the process exited before printing {text!r}")
