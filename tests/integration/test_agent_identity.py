"""An enrolled agent passes `check`, runs, and says which broker user it connected as.

An agent whose ``$SETEVNT_AMQP_URL`` names another user than its enrolled config has all
its acks dropped (wrong-user-id): it warns at start and its log names the user it is.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.access.agent_config import EnrolledConfig
from dispatcher.access.enroll import enroll
from schemas.signing import Signer
from tests.conftest import management
from tests.integration.helpers import ROOT, Process, guard_toml

pytestmark = pytest.mark.broker


@pytest.fixture
def client(amqp_url: str) -> Iterator[str]:
    """A unique client id, its broker user deleted afterwards (users are broker-wide)."""
    name = f"ID-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(OSError):
        management("DELETE", f"/users/{urllib.parse.quote(name, safe='')}")


def enrolled_config(amqp_url: str, client: str, tmp_path: Path) -> tuple[Path, str, str]:
    """The config `enroll` writes, with a private guard lock: (path, url, password)."""
    settings = BrokerSettings(url=amqp_url)
    key = Signer.generate().public_text()
    enrolled = enroll(settings, Management.for_broker(settings), client)
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([client])
    text = EnrolledConfig(client, enrolled.agent_url, key).toml()  # exec, no commands yet
    text += "\n" + guard_toml(tmp_path, client)  # a private lock, not /run/setevnt's
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path, enrolled.agent_url, enrolled.password


def agent(path: Path, tmp_path: Path, *command: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "--log-level", "INFO", *command, "--config", str(path),
        "--journal", str(tmp_path / "journal"),
    ]  # fmt: skip


def test_an_enrolled_agent_passes_check_and_logs_who_it_is(
    amqp_url: str, client: str, tmp_path: Path
) -> None:
    path, url, password = enrolled_config(amqp_url, client, tmp_path)
    checked = subprocess.run(
        agent(path, tmp_path, "check"),
        cwd=ROOT,
        env={**_clean(), "SETEVNT_AMQP_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "[backend.exec.commands] is empty" in checked.stdout

    running = Process(agent(path, tmp_path, "run"), env={"SETEVNT_AMQP_URL": url})
    try:
        redacted = url.replace(urllib.parse.quote(password, safe=""), "***")
        running.wait_line(f"agent {client} connected as broker user {client} to {redacted}")
        running.wait_line(f"agent {client} consuming")
        assert "overrides the [broker] url" not in running.output
    finally:
        running.terminate()
    assert password not in running.output


def test_an_environment_url_of_another_user_is_warned_about_and_logged(
    amqp_url: str, client: str, tmp_path: Path
) -> None:
    path, _, password = enrolled_config(amqp_url, client, tmp_path)
    running = Process(agent(path, tmp_path, "run"), env={"SETEVNT_AMQP_URL": amqp_url})
    try:
        running.wait_line(
            f"$SETEVNT_AMQP_URL overrides the [broker] url of {path}: it connects as broker "
            f"user guest, not {client}"
        )
        running.wait_line(f"agent {client} connected as broker user guest to amqp://guest:***@")
    finally:
        running.terminate()
    assert password not in running.output


def _clean() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SETEVNT_")}
