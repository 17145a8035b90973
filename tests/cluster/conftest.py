"""One private 3-node cluster for all the cluster tests, and a virtual host of its own per test.

The nodes are the tests' own (bench/cluster.py), started once (side by side) for this
package's tests in a pytest process (under `make test`'s workers, at most once per module)
and killed with their data deleted after its last one there, so they do not idle
through the rest of the suite; the machine's broker is never touched. A test that kills a
node starts it again before it ends, and each test works in a virtual host of its own, so
sharing the nodes shares no state between tests.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from bench.cluster import RABBITMQ_SERVER, Cluster, management, start_cluster
from bench.common import delete_vhost
from broker.management import Management


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    if not os.path.exists(RABBITMQ_SERVER):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs {RABBITMQ_SERVER} for a private cluster", pytrace=False)
        pytest.skip(f"{RABBITMQ_SERVER} is needed for a private cluster")
    started = start_cluster(3)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster_vhost(cluster: Cluster) -> Iterator[str]:
    name = f"setevnt-test-{uuid.uuid4().hex[:10]}"
    quoted = urllib.parse.quote(name, safe="")
    first = cluster.nodes[0]
    management(first, "PUT", f"/vhosts/{quoted}")
    try:
        management(
            first,
            "PUT",
            f"/permissions/{quoted}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield name
    finally:
        # Retried until gone: with a test's queues over three nodes it can take longer
        # than one request waits.
        api = Management(cluster.running().management_url, "guest", "guest", timeout=30)
        delete_vhost(api.call, quoted)


def vhost_url(cluster: Cluster, vhost: str) -> str:
    """Every node's URL for ``vhost``, comma-separated."""
    quoted = urllib.parse.quote(vhost, safe="")
    return ",".join(node.url.replace("/%2F", f"/{quoted}") for node in cluster.nodes)
