"""A RabbitMQ node of the bench's own, beside the machine's broker, with the file
descriptors a production broker gets.

A classic queue writes its index through a file handle, and RabbitMQ 3.10 keeps at most
about as many handles open as its file-descriptor limit allows. The machine's broker here
was started with a soft limit of 1,024 (927 handles for 10,000 client queues), so it
evicts a handle for nearly every command and its single file_handle_cache process, not
the disk, sets the pace. Installs meant for fleets raise the limit (Debian's systemd unit
sets 65,536, Docker's default is higher still). This node gets the process's hard limit
(capped at 65,536), on the same machine, disk and RabbitMQ install; its own name, ports,
cookie and data in a temporary directory; never joined to the machine's broker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
WANTED_FDS = 65_536
START_TIMEOUT = 120.0
READY_POLL = 0.2  # seconds between looks at the booting node's management API


@dataclass(frozen=True)
class Node:
    name: str
    amqp_address: str  # host:port
    management_url: str
    fd_limit: int
    home: Path  # its data, logs and Erlang cookie


def fd_limit() -> int:
    """The limit the node gets: as many descriptors as this process may allow it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return WANTED_FDS if hard == resource.RLIM_INFINITY else min(hard, WANTED_FDS)


@contextlib.contextmanager
def own_node() -> Iterator[Node]:
    if not Path(RABBITMQ_SERVER).exists():
        raise SystemExit(f"bench: {RABBITMQ_SERVER} is needed for --own-node")
    directory = Path(tempfile.mkdtemp(prefix="setevnt-bench-node-"))
    amqp, management, dist = free_port(), free_port(), free_port()
    (directory / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management}\n"
    )
    (directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
    name = f"setevnt-bench-{amqp}@localhost"
    env = {
        **os.environ,
        "HOME": str(directory),  # its own Erlang cookie
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(directory / "pid"),
    }
    limit = fd_limit()
    log = open(directory / "server.out", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [RABBITMQ_SERVER],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    try:
        node = Node(name, f"127.0.0.1:{amqp}", f"http://127.0.0.1:{management}", limit, directory)
        _wait_ready(node, process, directory)
        print(f"bench: own node on {node.amqp_address}, {limit} file descriptors", file=sys.stderr)
        yield node
    finally:
        _kill(process, directory / "pid")
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def ctl(node: Node, *args: str, timeout: float = 600.0) -> str:
    """Run ``rabbitmqctl`` against the bench's node, with the node's own cookie."""
    done = subprocess.run(
        [RABBITMQCTL, "-n", node.name, *args],
        env={**os.environ, "HOME": str(node.home)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def _wait_ready(node: Node, process: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    request = urllib.request.Request(
        f"{node.management_url}/api/overview",
        headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},  # guest:guest
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (directory / "server.out").read_text(errors="replace")[-2000:]
            raise SystemExit(f"bench: the bench's node exited: {output}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(READY_POLL)
    raise SystemExit(f"bench: the bench's node did not start within {START_TIMEOUT:.0f} s")


def _kill(process: subprocess.Popen[bytes], pid_file: Path) -> None:
    """SIGKILL the Erlang VM and its launcher script: the node's data is deleted next, so a
    graceful stop would keep nothing."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    process.kill()
    process.wait(30)
