#!/usr/bin/env python3
"""Generate deploy/rabbitmq/definitions.json from broker/topology.py.

The shared exchanges, queues and bindings come from the same module the dispatcher
declares them with, so a broker loaded from these definitions never disagrees with
the dispatcher (a queue declared with other arguments fails with 406). ``--check``
exits 1 when the committed file is stale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker import topology

OUT = Path(__file__).resolve().parents[1] / "deploy/rabbitmq/definitions.json"
VHOST = "/"
# Demo credentials for the compose stack only; change them for a real install.
USERS = {"setevnt-dispatcher": "setevnt", "setevnt-fleet": "setevnt"}


class Recorder:
    """Collects what declare_core declares, in definitions.json form."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.queues: list[dict[str, Any]] = []
        self.bindings: list[dict[str, Any]] = []

    def exchange_declare(self, exchange: str, exchange_type: Any = "direct", **kw: Any) -> None:
        self.exchanges.append(
            {
                "name": exchange,
                "vhost": VHOST,
                "type": exchange_type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        )

    def queue_declare(self, queue: str, **kw: Any) -> None:
        self.queues.append(
            {
                "name": queue,
                "vhost": VHOST,
                "durable": True,
                "auto_delete": False,
                "arguments": kw.get("arguments") or {},
            }
        )

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None) -> None:
        self.bindings.append(
            {
                "source": exchange,
                "vhost": VHOST,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": routing_key or "",
                "arguments": {},
            }
        )


def password_hash(password: str) -> str:
    # RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)).
    # A fixed salt keeps the generated file stable; these are demo credentials.
    salt = hashlib.sha256(password.encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions() -> dict[str, Any]:
    recorder = Recorder()
    topology.declare_core(recorder)
    return {
        "rabbit_version": "3.10.8",
        "users": [
            {
                "name": name,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                # enroll creates client users through the management API
                "tags": ["administrator"] if name == "setevnt-dispatcher" else [],
            }
            for name, password in USERS.items()
        ],
        "vhosts": [{"name": VHOST}],
        "permissions": [
            {"user": name, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}
            for name in USERS
        ],
        "policies": [
            {
                "vhost": VHOST,
                "name": "setevnt-client-bytes",
                "pattern": r"^setevnt\.client\.",
                "apply-to": "queues",
                "priority": 0,
                # A safety net beside the per-queue message count: no client's backlog
                # may hold more than 1 MiB of commands.
                "definition": {"max-length-bytes": 1048576},
            }
        ],
        "exchanges": recorder.exchanges,
        "queues": recorder.queues,
        "bindings": recorder.bindings,
    }


def render() -> str:
    return json.dumps(definitions(), indent=2) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run scripts/make_definitions.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
