"""Shared bench plumbing: a throwaway vhost on the local broker, and process RSS."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from broker.management import Management

ROOT = Path(__file__).resolve().parents[1]


# The project's own management-API client, as the local broker's administrator.
management = Management("http://127.0.0.1:15672", "guest", "guest", timeout=30).call


@contextlib.contextmanager
def scratch_vhost(prefix: str) -> Iterator[str]:
    """Yield an AMQP URL for a new vhost that is deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    management("PUT", f"/vhosts/{name}")
    management(
        "PUT", f"/permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
    )
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        management("DELETE", f"/vhosts/{name}")


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
