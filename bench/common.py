"""Shared bench plumbing: a throwaway vhost on the local broker, and process RSS."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

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
