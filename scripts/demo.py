#!/usr/bin/env python3
"""`make demo`: a collector and three simulated agents on the local broker: triggers, a
storm, a request from another service and a drifted client.

Runs in its own virtual host (``setevnt-demo``), which it deletes at the end, so it leaves
nothing behind on the broker. Everything it starts, it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from broker.errors import BrokerError
from broker.management import Management
from dispatcher import Client, RequestRefused

ROOT = Path(__file__).resolve().parents[1]
VHOST = "setevnt-demo"
# The help desk's rule, for the request step: the demo's requester connects as guest.
POLICY = """[users.guest]
events = ["*_STARTCYCLE"]
targets = ["client"]
max_targets = 1
"""
URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
CLIENTS = {"DEMO-PC01": "nt", "DEMO-PC02": "nt", "DEMO-PC03": "win9x"}
BIN = Path(sys.executable).parent
TARGETS = [word for client in CLIENTS for word in ("--client", client)]


# The project's own management-API client, as the local broker's administrator.
management = Management("http://127.0.0.1:15672", "guest", "guest", timeout=10).call


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def run(*argv: str) -> int:
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, check=False).returncode


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a project command in the background, its output going to ``log``."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]], stdout=out, stderr=subprocess.STDOUT
        )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="setevnt-demo-"))
    os.environ["SETEVNT_AMQP_URL"] = URL
    # The demo's own database, and its agents connect as guest for every client: on this
    # development broker the collector trusts guest's acks (enrolled agents need not).
    os.environ["SETEVNT_DB"] = str(workdir / "setevnt.db")
    os.environ["SETEVNT_TRUSTED_SENDERS"] = "guest"
    started: list[subprocess.Popen[bytes]] = []
    try:
        management("PUT", f"/vhosts/{VHOST}")
        management(
            "PUT", f"/permissions/{VHOST}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
        return demo(workdir, started)
    finally:
        step("stopping what the demo started")
        for proc in started:
            proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            management("DELETE", f"/vhosts/{VHOST}")
        except BrokerError as exc:
            print(f"demo: could not delete vhost {VHOST}: {exc}")
        print(f"logs kept in {workdir}")


def demo(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    port = free_port()
    step("creating the dispatcher's command-signing key; agents obey only that key")
    key_file = workdir / "dispatcher.key"
    public_key = subprocess.run(
        [str(BIN / "setevnt-dispatcher"), "keygen", "--out", str(key_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    os.environ["SETEVNT_SIGNING_KEY_FILE"] = str(key_file)
    print(f"public key {public_key}")
    step("provisioning the demo clients' queues")
    run("setevnt-dispatcher", "--log-level", "WARNING", "provision", *CLIENTS)

    step(f"starting the collector (metrics on http://127.0.0.1:{port}/metrics)")
    policy = workdir / "policy.toml"
    policy.write_text(POLICY)
    serve = ["setevnt-dispatcher", "serve", "--metrics-port", str(port), "--policy", str(policy)]
    serve += ["--copylist-version", "2.0"]  # the site's client services
    started.append(spawn(serve, workdir / "dispatcher.log"))
    step(f"starting {len(CLIENTS)} agents on the simulated backend")
    for client, platform in CLIENTS.items():
        config = workdir / f"{client}.toml"
        config.write_text(
            f'client_id = "{client}"\nplatform = "{platform}"\ngroups = ["demo"]\n'
            f'copylist_version = "{"1.9" if client == "DEMO-PC02" else "2.0"}"\n'
            f'[agent]\njournal = "{workdir / client}.journal"\n'
            f'[security]\ndispatcher_public_key = "{public_key}"\n'
            f'[guard]\nprobes = ["lock"]\nlock = "{workdir / client}.lock"\n'
            '[backend]\ntype = "simulated"\n[backend.simulated]\nduration = 0.05\n'
        )
        agent = ["setevnt-agent", "run", "--config", str(config)]
        started.append(spawn(agent, workdir / f"{client}.log"))
    for client in CLIENTS:
        wait_until(
            lambda c=client: f"agent {c} consuming".encode() in (workdir / f"{c}.log").read_bytes(),
            30,
            client,
        )

    step("setevnt with no event: CCIM32 and Copy Queue cycle on every client")
    run("setevnt", *TARGETS, "--wait", "10")
    step("a silent Client Service NT close: DEMO-PC03 is a 95/98 client and refuses it")
    run(
        "setevnt",
        *TARGETS,
        "/q",
        "CLISVCL_CLOSE",
        "--wait",
        "10",
    )
    step("a client nobody has provisioned is reported, not silently dropped")
    run("setevnt", "--client", "DEMO-PC99", "cq", "--wait", "2")
    more_steps()

    step(f"what the collector serves on http://127.0.0.1:{port}/metrics (non-zero series)")
    time.sleep(1.0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            shown = "_created" not in line and "_bucket" not in line and not line.endswith(" 0.0")
            if line.startswith("setevnt_") and shown:  # the non-zero series
                print("  " + line)
    return 0


def more_steps() -> None:
    step("a paced cycle storm over the fleet registry's group 'demo'")
    wait_until(lambda: len(fleet()) == len(CLIENTS), 20, "every agent registered")
    run("setevnt-dispatcher", "storm", "CQMGR32_STARTCYCLE", "--group", "demo", "--rate", "5/s")
    step("a help-desk service asks through setevnt.requests (dispatcher.Client, policy)")
    with Client(URL) as client:
        handle = client.trigger("CCIM32_STARTCYCLE", clients=["DEMO-PC01"])
        print(f"accepted: storm {handle.storm_id}, {handle.targets} target(s)")
        summary = handle.wait(timeout=30)
        print(f"summary: {summary.state}, {summary.counts}, p50 {summary.latency_p50:.3f} s")
        try:
            client.trigger("CLISVCL_CLOSE", clients=["DEMO-PC01"])
        except RequestRefused as refused:
            print(f"CLISVCL_CLOSE refused: {refused}")
    step("DEMO-PC02 runs client services 1.9, the site wants 2.0 (KB Q174961)")
    run("setevnt-dispatcher", "clients", "--drifted")


def fleet() -> list[str]:
    shown = subprocess.run(
        [str(BIN / "setevnt-dispatcher"), "clients", "--json"], capture_output=True, text=True
    )
    return shown.stdout.splitlines() if shown.returncode == 0 else []


if __name__ == "__main__":
    sys.exit(main())
