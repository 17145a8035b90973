"""A private RabbitMQ cluster for tests and benches: nodes of its own beside the machine's.

Each node has its own name, ports and data directory; all share one Erlang cookie of
their own (never the machine broker's) and are joined to the first one. A node can be
SIGKILLed and started again on its data, as a crashed cluster member would be. The
machine's broker (127.0.0.1:5672) is never touched.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Not /usr/sbin/rabbitmqctl: that one runs as the rabbitmq user, with its cookie.
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
START_TIMEOUT = 120.0
READY_POLL = 0.2  # seconds between looks at a booting node's management API
FDS = 65_536
_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


@dataclass
class ClusterNode:
    name: str
    amqp_port: int
    management_port: int
    dist_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"


@dataclass
class Cluster:
    root: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what a setevnt process is given."""
        return ",".join(node.url for node in self.nodes)

    def env(self, node: ClusterNode) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root),  # the cluster's own Erlang cookie
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(node.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(node.directory / "pid"),
        }

    def ctl(self, node: ClusterNode, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            [RABBITMQCTL, "-n", node.name, *args],
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {done.stderr}")
        return done.stdout

    def start(self, node: ClusterNode) -> None:
        node.log = open(node.directory / "server.out", "ab")  # noqa: SIM115 - closed in stop
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = FDS if hard == resource.RLIM_INFINITY else min(hard, FDS)
        node.process = subprocess.Popen(
            [RABBITMQ_SERVER],
            env=self.env(node),
            stdout=node.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
        self.wait_ready(node)

    def wait_ready(self, node: ClusterNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert node.process is not None
            if node.process.poll() is not None:
                tail = (node.directory / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {node.name} exited: {tail}")
            try:
                management(node, "GET", "/overview")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(READY_POLL)
        raise RuntimeError(f"node {node.name} did not start within {START_TIMEOUT:.0f} s")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL the node's Erlang VM: no shutdown, as a crash or power cut."""
        pid = int((node.directory / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        assert node.process is not None
        node.process.wait(30)
        node.log.close()

    def stop(self, node: ClusterNode) -> None:
        if node.process is not None and node.process.poll() is None:
            node.process.terminate()
            try:
                node.process.wait(60)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        if node.log is not None:
            node.log.close()

    def running(self) -> ClusterNode:
        """A node whose process is alive, to ask the management API through."""
        return next(n for n in self.nodes if n.process is not None and n.process.poll() is None)

    def running_nodes(self, via: ClusterNode) -> int:
        return sum(1 for n in management(via, "GET", "/nodes") if n.get("running"))

    def discard(self, node: ClusterNode) -> None:
        """SIGKILL the node, if it runs, whose data is about to be deleted anyway."""
        if node.process is not None and node.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((node.directory / "pid").read_text().strip()), signal.SIGKILL)
            node.process.kill()
            node.process.wait(30)
        if node.log is not None:
            node.log.close()

    def close(self) -> None:
        """Kill every node and delete the cluster's data: nothing of it is kept, so nothing
        needs a graceful shutdown."""
        for node in self.nodes:
            self.discard(node)
        shutil.rmtree(self.root, ignore_errors=True)


def management(node: ClusterNode, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{node.management_url}/api{path}",
        data=data,
        method=method,
        headers={"Authorization": _AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def start_cluster(size: int) -> Cluster:
    """``size`` new nodes joined into one cluster; close() stops them and deletes their data."""
    if not Path(RABBITMQ_SERVER).exists():
        raise RuntimeError(f"{RABBITMQ_SERVER} is needed for a private cluster")
    root = Path(tempfile.mkdtemp(prefix="setevnt-cluster-"))
    cookie = root / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16))
    cookie.chmod(0o400)
    (root / "enabled_plugins").write_text("[rabbitmq_management].\n")
    cluster = Cluster(root)
    try:
        for _ in range(size):
            cluster.nodes.append(_new_node(root))
        first = cluster.nodes[0]

        def boot(node: ClusterNode) -> None:
            cluster.start(node)
            if node is not first:  # a joiner's app stops first: seconds that touch no other node
                cluster.ctl(node, "stop_app")

        # Each node's boot mostly waits on its own Erlang VM, so they boot side by side.
        with concurrent.futures.ThreadPoolExecutor(size) as pool:
            list(pool.map(boot, cluster.nodes))
        for node in cluster.nodes[1:]:  # one join at a time, into the cluster as it is
            cluster.ctl(node, "join_cluster", first.name)
            cluster.ctl(node, "start_app")
    except BaseException:
        cluster.close()
        raise
    return cluster


def _new_node(root: Path) -> ClusterNode:
    amqp, management_port, dist = free_port(), free_port(), free_port()
    directory = root / f"node-{amqp}"
    directory.mkdir()
    (directory / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
        "loopback_users = none\n"
    )
    return ClusterNode(f"setevnt-cluster-{amqp}@localhost", amqp, management_port, dist, directory)
