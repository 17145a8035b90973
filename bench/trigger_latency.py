#!/usr/bin/env python3
"""Time from `setevnt --wait` starting to its ack, for one command on the local broker.

Measured as a user sees it: the whole CLI process, N times, against one running agent.
Baseline in the same run: the time to start the interpreter and import the CLI, so the
broker round trip can be told apart from Python start-up. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
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
    scratch_vhost,
    stop_cleanly_on_sigterm,
    wait_line,
)
from dispatcher import Dispatcher
from dispatcher.access import keys

RUNS = int(os.environ.get("BENCH_RUNS", "20"))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stdout}{done.stderr}")
    return elapsed, done.stdout


def main() -> int:
    stop_cleanly_on_sigterm()
    with scratch_vhost("setevnt-bench-latency") as url, tempfile.TemporaryDirectory() as tmp:
        signer = keys.generate(f"{tmp}/dispatcher.key")  # commands signed, as in production
        env = {
            **os.environ,
            "SETEVNT_AMQP_URL": url,
            "SETEVNT_SIGNING_KEY_FILE": f"{tmp}/dispatcher.key",
            "SETEVNT_DISPATCHER_PUBLIC_KEY": signer.public_text(),
            # The agent runs as the scratch vhost's guest, not as an enrolled user.
            "SETEVNT_TRUSTED_SENDERS": "guest",
        }
        with Dispatcher(url, signer=signer) as dispatcher:
            dispatcher.provision(["BENCH-PC"])
        agent = subprocess.Popen(
            agent_argv("BENCH-PC", f"{tmp}/journal"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert agent.stdout is not None
            wait_line(agent.stdout, agent_ready("BENCH-PC"))
            cli = [
                sys.executable,
                "-m",
                "dispatcher.cli.setevnt",
                "--client",
                "BENCH-PC",
                "CCIM32_STARTCYCLE",
                "--wait",
                "10",
                "--json",
            ]
            baseline = [sys.executable, "-c", "import dispatcher.cli.setevnt"]
            walls, acks, starts = [], [], []
            for _ in range(RUNS):
                starts.append(timed(baseline, env)[0])
                wall, out = timed(cli, env)
                walls.append(wall)
                acks.append(json.loads(out)["latency_s"])
        finally:
            agent.terminate()
            agent.wait(timeout=15)
            if agent.stdout is not None:
                agent.stdout.close()
    print(
        json.dumps(
            {
                "bench": "setevnt_wait_one_command",
                "runs": RUNS,
                "cli_wall_median_s": round(statistics.median(walls), 4),
                "cli_wall_max_s": round(max(walls), 4),
                "ack_latency_median_s": round(statistics.median(acks), 4),
                "ack_latency_max_s": round(max(acks), 4),
                "baseline_python_start_and_import_median_s": round(statistics.median(starts), 4),
                "simulated_component_run_s": 0.02,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
