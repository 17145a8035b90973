"""A thread of the dispatcher service that dies takes the service down, instead of leaving
it half alive (acks collected, requests never taken) where no supervisor would notice.

The service runs as a broker user of the test's own; the broker then refuses that user
the request queue and the intake's connection is cut. The intake cannot consume again,
which is not worth retrying: the whole service must exit (non-zero, so systemd restarts
it and an operator sees why), not carry on without it.
"""

from __future__ import annotations

import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BROKER_HOST, management
from tests.integration.helpers import Process, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def service_user(vhost: str) -> Iterator[tuple[str, str]]:
    """A broker user with every right in the test's vhost, deleted afterwards."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    quoted = urllib.parse.quote(name, safe="")
    management("PUT", f"/users/{quoted}", {"password": "pw", "tags": ""})
    try:
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        management("PUT", f"/permissions/{urllib.parse.quote(vhost, safe='')}/{quoted}", everything)
        vhost_part = urllib.parse.quote(vhost, safe="")
        yield name, f"amqp://{name}:pw@{BROKER_HOST}:5672/{vhost_part}"
    finally:
        management("DELETE", f"/users/{quoted}")


def _connections(vhost: str, name: str) -> list[str]:
    found = management("GET", f"/vhosts/{urllib.parse.quote(vhost, safe='')}/connections") or []
    return [
        c["name"]
        for c in found
        if (c.get("client_properties") or {}).get("connection_name") == name
    ]


def test_the_service_exits_when_its_intake_cannot_go_on(
    vhost: str, service_user: tuple[str, str], tmp_path: Path
) -> None:
    user, url = service_user
    env = {"SETEVNT_AMQP_URL": url, "SETEVNT_DB": str(tmp_path / "setevnt.db")}
    argv = [sys.executable, "-m", "dispatcher", "serve", "--metrics-port", "0"]
    serve = Process(argv, env=env)
    try:
        serve.wait_line("taking requests from setevnt.requests", timeout=30)
        rights = {"configure": ".*", "write": ".*", "read": r"^(?!setevnt\.requests$).*"}
        quoted = f"{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(user, safe='')}"
        management("PUT", f"/permissions/{quoted}", rights)
        for name in wait_for(lambda: _connections(vhost, "setevnt-intake"), 20, "intake"):
            management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")
        wait_for(lambda: serve.proc.poll() is not None, 60, f"serve to exit\n{serve.output}")
        assert serve.proc.returncode == 3, serve.output
        assert "intake stopped" in serve.output, serve.output
        assert "ACCESS_REFUSED" in serve.output, serve.output
    finally:
        serve.terminate()
