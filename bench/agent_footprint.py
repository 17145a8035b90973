#!/usr/bin/env python3
"""Idle RSS of one agent next to a bare pika consumer, measured in the same run.

The bare consumer (a BlockingConnection consuming one queue) is the floor for any
Python agent; the figure to watch is the agent's excess over it. Prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    agent_argv,
    agent_ready,
    rss_mb,
    scratch_vhost,
    stop_cleanly_on_sigterm,
    wait_line,
)
from dispatcher import Dispatcher
from schemas.signing import Signer

BARE_CONSUMER = """
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.basic_consume(sys.argv[2], lambda *a: None)
print("consuming", flush=True)
channel.start_consuming()
"""
PUBLIC_KEY = Signer.generate().public_text()
SETTLE_SECONDS = 3.0  # let start-up allocations settle before reading RSS
SAMPLES = 5


def idle_rss(argv: list[str], ready: str, env: dict[str, str] | None = None) -> float:
    import os

    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        wait_line(proc.stdout, ready)
        time.sleep(SETTLE_SECONDS)
        readings = []
        for _ in range(SAMPLES):
            readings.append(rss_mb(proc.pid))
            time.sleep(0.2)
        return max(readings)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    stop_cleanly_on_sigterm()
    with scratch_vhost("setevnt-bench-rss") as url, Dispatcher(url) as dispatcher:
        dispatcher.provision(["BENCH-PC"])
        queue = "setevnt.client.BENCH-PC"
        bare = idle_rss([sys.executable, "-c", BARE_CONSUMER, url, queue], "consuming")
        with tempfile.TemporaryDirectory() as tmp:
            agent = idle_rss(
                agent_argv("BENCH-PC", f"{tmp}/journal"),
                agent_ready("BENCH-PC"),
                # Verifying signatures, as every real agent does.
                env={"SETEVNT_AMQP_URL": url, "SETEVNT_DISPATCHER_PUBLIC_KEY": PUBLIC_KEY},
            )
    print(
        json.dumps(
            {
                "bench": "agent_idle_rss",
                "bare_pika_consumer_mb": round(bare, 1),
                "agent_mb": round(agent, 1),
                "agent_over_bare_mb": round(agent - bare, 1),
                "target_agent_mb": 31.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
