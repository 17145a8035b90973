"""Shared bench plumbing: a throwaway vhost on the local broker, and process RSS."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

MGMT = "http://127.0.0.1:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
ROOT = Path(__file__).resolve().parents[1]


def management(method: str, path: str, body: object = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        MGMT + path,
        data=data,
        method=method,
        headers={"Authorization": AUTH, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()


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
