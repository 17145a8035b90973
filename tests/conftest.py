"""Shared fixtures: the real broker, a private vhost per test, real agent processes.

With CI=true a missing broker fails the run; on a developer machine broker tests skip
with the reason. Every broker test gets its own vhost, created and deleted through the
management API, so tests never see each other's queues.

That isolation lets `make test` run the suite on several pytest-xdist workers, each
module's tests on one worker (`--dist loadfile`: its module-scoped nodes, fleets and
vhosts are set up once). Tests marked ``exclusive`` change the broker for
everyone, so they refuse to run beside others and `make test` runs them alone afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

BROKER_HOST = "127.0.0.1"
MGMT = f"http://{BROKER_HOST}:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def management(method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """Call the RabbitMQ management HTTP API; returns decoded JSON (or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        MGMT + path,
        data=data,
        method=method,
        headers={"Authorization": AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def _broker_problem() -> str | None:
    try:
        with socket.create_connection((BROKER_HOST, 5672), timeout=2):
            pass
    except OSError as exc:
        return f"no RabbitMQ on {BROKER_HOST}:5672 ({exc}); run `make broker`"
    try:
        management("GET", "/overview")
    except (OSError, urllib.error.URLError) as exc:
        return f"RabbitMQ management API not reachable on :15672 ({exc}); run `make broker`"
    return None


@pytest.fixture(autouse=True)
def alone_if_exclusive(request: pytest.FixtureRequest) -> None:
    """A test that changes the broker for everyone fails at once beside other workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and request.node.get_closest_marker("exclusive"):
        pytest.fail(
            "this test changes the machine's broker for every other test: run the "
            "exclusive tests without -n (make test runs them alone, after the rest)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def broker() -> None:
    problem = _broker_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the real broker: {problem}", pytrace=False)
    pytest.skip(problem)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A virtual host of its own on the machine's broker, deleted afterwards: what a test,
    or a module's shared fixture, works in."""
    name = f"setevnt-test-{uuid.uuid4().hex[:10]}"
    quoted = urllib.parse.quote(name, safe="")
    management("PUT", f"/vhosts/{quoted}")
    try:  # from here on the vhost exists: delete it whatever fails next
        management(
            "PUT",
            f"/permissions/{quoted}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield name
    finally:
        management("DELETE", f"/vhosts/{quoted}")


def vhost_amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER_HOST}:5672/{urllib.parse.quote(vhost, safe='')}"


@pytest.fixture
def vhost(broker: None) -> Iterator[str]:
    with private_vhost() as name:
        yield name


@pytest.fixture
def amqp_url(vhost: str) -> str:
    return vhost_amqp_url(vhost)


@pytest.fixture(scope="session", autouse=True)
def dispatcher_signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every dispatcher a test starts signs with this key; test agents trust only it."""
    from dispatcher.access import keys

    path = tmp_path_factory.mktemp("keys") / "dispatcher.key"
    keys.generate(path)
    # Test agents and simulated fleets connect as guest and answer for many clients: the
    # collectors tests start trust guest, as a development broker's would.
    settings = {keys.KEY_FILE_ENV: str(path), "SETEVNT_TRUSTED_SENDERS": "guest"}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield str(path)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def private_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test starts (`serve`, `setevnt`, storms) keeps its SQLite database in the
    test's own directory, never ./setevnt.db in the checkout."""
    monkeypatch.setenv("SETEVNT_DB", str(tmp_path / "setevnt.db"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """The dispatcher's database on each engine: a file of the test's own (SQLite), a
    database of its own on the machine's PostgreSQL, dropped after the test."""
    from tests.databases import database

    with database(request.param, tmp_path) as settings:
        yield settings
