"""Onboarding and signing through the real CLIs: `enroll` writes a config `check` accepts,
refuses the wrong broker, and nothing publishes unsigned unless told to.

Every refusal is one line, with its exit code, and never a traceback; the table of them
is printed (`pytest -s`) for the operator's documentation.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import stat
import subprocess
import sys
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.node import Node, own_node
from dispatcher.access import keys
from tests.conftest import management
from tests.integration.fleet import Fleet
from tests.integration.helpers import ROOT, wait_for

pytestmark = pytest.mark.broker

NO_KEY = (
    "no signing key: give --key PATH or set $SETEVNT_SIGNING_KEY_FILE, or pass --unsigned "
    "(agents that require signatures reject unsigned commands)"
)
NO_KEY_ENROLL = (
    "no signing key: give --key PATH or set $SETEVNT_SIGNING_KEY_FILE, or pass --unsigned "
    "(then the agent runs commands nobody signed)"
)
BOTH = "--key and --unsigned contradict each other: give one"
TABLE: list[tuple[str, str, int]] = []  # (input, message, exit code), printed at the end


def run(
    module: str, *argv: str, env: dict[str, str] | None = None, key: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGV`` with the session's environment (without its key: ``key``)."""
    environ = {**os.environ, **(env or {})}
    if not key:
        environ.pop(keys.KEY_FILE_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_all(
    *calls: tuple[tuple[str, ...], dict[str, Any]],
) -> list[subprocess.CompletedProcess[str]]:
    """:func:`run` for each ``(argv, keywords)`` at once (they are independent), results in
    the calls' order."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: run(*call[0], **call[1]), calls))


def refused(
    done: subprocess.CompletedProcess[str], shown: str, prefix: str, message: str, code: int = 2
) -> None:
    """One line on stderr, exactly ``prefix: error: message``; no traceback; exit ``code``."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{prefix}: error: {message}", done.stderr
    assert done.returncode == code, done.stderr
    TABLE.append((shown, message, code))


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    width = max((len(row[0]) for row in TABLE), default=10)
    print(f"\n{'input':<{width}}  exit  message")
    for shown, message, code in TABLE:
        print(f"{shown:<{width}}  {code:>4}  {message}")


@pytest.fixture
def users() -> Iterator[list[str]]:
    """Broker users the test enrolls on the shared broker, deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(OSError):
            management("DELETE", f"/users/{urllib.parse.quote(name, safe='')}")


def _client(users: list[str]) -> str:
    name = f"enrollcli-{uuid.uuid4().hex[:8]}"
    users.append(name)
    return name


def _user(name: str) -> dict[str, object] | None:
    try:
        found = management("GET", f"/users/{urllib.parse.quote(name, safe='')}")
    except OSError:  # 404
        return None
    return found if isinstance(found, dict) else None


# -- enroll: the config it writes -----------------------------------------------------------


def test_enrolled_config_is_complete_and_accepted_by_check(
    amqp_url: str, users: list[str], tmp_path: Path, dispatcher_signing_key: str
) -> None:
    client = _client(users)
    out = tmp_path / "agent.toml"
    done = run("dispatcher", "--url", amqp_url, "enroll", client, "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown == {
        "client_id": client,
        "user": client,
        "queue": f"setevnt.client.{client}",
        "config_path": str(out),
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = tomllib.loads(out.read_text())
    signer = keys.load(dispatcher_signing_key)
    assert signer is not None
    assert config["client_id"] == client
    assert config["agent"] == {"journal": "/var/lib/setevnt/journal"}
    assert config["security"] == {"dispatcher_public_key": signer.public_text()}
    assert config["backend"] == {"type": "exec", "exec": {"commands": {}}}
    assert "# CCIM32_STARTCYCLE = [" in out.read_text(), "the catalog's events as examples"
    url = urllib.parse.urlsplit(config["broker"]["url"])
    assert url.username == client and url.password and url.port == 5672
    checked = run("agent", "check", "--config", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # --out never replaces a file, and refuses before the broker user changes.
    before = out.read_text()
    again = run("dispatcher", "--url", amqp_url, "enroll", client, "--rotate", "--out", str(out))
    refused(
        again,
        "enroll --out EXISTING",
        "setevnt-dispatcher",
        f"{out} exists; not replacing it (choose another --out)",
    )
    assert out.read_text() == before


def test_enroll_unsigned_says_so_in_the_config(amqp_url: str, users: list[str]) -> None:
    client = _client(users)
    done = run(
        "dispatcher",
        "--url",
        amqp_url,
        "enroll",
        client,
        "--unsigned",
        "--backend",
        "simulated",
        "--json",
        key=False,
    )
    assert done.returncode == 0, done.stderr
    text = json.loads(done.stdout)["config"]
    config = tomllib.loads(text)
    assert config["security"] == {"allow_unsigned": True}
    assert config["backend"] == {"type": "simulated"}
    assert "# Enrolled with --unsigned" in text


def test_enroll_keeps_refusing_to_replace_an_enrolled_client(
    amqp_url: str, users: list[str]
) -> None:
    client = _client(users)
    first = run("dispatcher", "--url", amqp_url, "enroll", client)
    assert first.returncode == 0, first.stderr
    again = run("dispatcher", "--url", amqp_url, "enroll", client)
    refused(
        again,
        "enroll ENROLLED (no --rotate)",
        "setevnt-dispatcher",
        f"client {client!r} is already enrolled: --rotate gives it a new password "
        "(the old one stops working)",
    )


# -- enroll: bad input, refused before the broker is touched ----------------------------


def test_enroll_refuses_without_a_key_or_with_a_bad_one(
    amqp_url: str, tmp_path: Path, dispatcher_signing_key: str
) -> None:
    client = f"enrollcli-{uuid.uuid4().hex[:8]}"
    base = ("dispatcher", "--url", amqp_url, "enroll", client)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    missing = tmp_path / "missing.key"
    no_key, bad, absent, both = run_all(
        (base, {"key": False}),
        ((*base, "--key", str(junk)), {}),
        ((*base, "--key", str(missing)), {}),
        ((*base, "--key", dispatcher_signing_key, "--unsigned"), {}),
    )
    refused(no_key, "enroll (no key)", "setevnt-dispatcher", NO_KEY_ENROLL)
    refused(
        bad,
        "enroll --key NOT-A-KEY",
        "setevnt-dispatcher",
        f"signing key {junk}: not a key `setevnt-dispatcher keygen` wrote",
    )
    refused(
        absent,
        "enroll --key MISSING",
        "setevnt-dispatcher",
        f"signing key {missing}: No such file or directory",
    )
    refused(both, "enroll --key K --unsigned", "setevnt-dispatcher", BOTH)
    assert _user(client) is None, "nothing was created"


# -- the management API must be the AMQP URL's broker -------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """A RabbitMQ node of this module's own (own name, ports, data); stopped afterwards."""
    try:
        with own_node() as started:
            yield started
    except SystemExit as exc:  # own_node's way of saying it could not start one
        pytest.fail(str(exc))


def test_enroll_refuses_a_management_api_of_another_broker(node: Node, users: list[str]) -> None:
    client = _client(users)
    private = f"amqp://guest:guest@{node.amqp_address}/%2F"
    shared_api = "http://127.0.0.1:15672"
    message = (
        f"the management API at {shared_api} is not the broker of "
        f"amqp://guest:***@{node.amqp_address}/%2F: pass --management-url (or "
        "$SETEVNT_MANAGEMENT_URL) of that broker"
    )
    commands = ("enroll", "revoke", "enroll-service")
    env = {"SETEVNT_MANAGEMENT_URL": shared_api}
    *flagged, from_env = run_all(
        *(
            (("dispatcher", "--url", private, command, client, "--management-url", shared_api), {})
            for command in commands
        ),
        (("dispatcher", "--url", private, "enroll", client), {"env": env}),
    )
    for command, done in zip(commands, flagged, strict=True):
        refused(done, f"{command} --management-url OTHER", "setevnt-dispatcher", message)
    refused(from_env, "enroll ($SETEVNT_MANAGEMENT_URL=OTHER)", "setevnt-dispatcher", message)
    assert _user(client) is None, "no user was created on the shared broker"

    # Its own API: enrolled there, and only there.
    own = run(
        "dispatcher", "--url", private, "enroll", client, "--management-url", node.management_url
    )
    assert own.returncode == 0, own.stderr
    assert f"@{node.amqp_address}/" in tomllib.loads(own.stdout)["broker"]["url"]
    assert _user(client) is None


def test_help_names_the_management_default() -> None:
    shown = run("dispatcher", "enroll", "--help").stdout
    flat = " ".join(shown.split())
    assert "$SETEVNT_MANAGEMENT_URL" in flat
    assert "http://<AMQP host>:<AMQP port + 10000>, e.g. 15672 for 5672" in flat


# -- publishing needs a key or an explicit --unsigned -----------------------------------


def test_publishing_without_a_key_is_refused(amqp_url: str, tmp_path: Path) -> None:
    db = tmp_path / "refused.db"
    env = {"SETEVNT_AMQP_URL": amqp_url, "SETEVNT_DB": str(db)}
    trigger = run(
        "dispatcher.cli.setevnt", "--client", "PC1", "CCIM32_STARTCYCLE", env=env, key=False
    )
    refused(trigger, "setevnt (no key)", "setevnt", NO_KEY)
    storm = run("dispatcher", "storm", "CCIM32_STARTCYCLE", "--client", "PC1", env=env, key=False)
    refused(storm, "storm (no key)", "setevnt-dispatcher", NO_KEY)
    resume = run("dispatcher", "resume", "S1", env=env, key=False)
    refused(resume, "resume (no key)", "setevnt-dispatcher", NO_KEY)
    serve = run("dispatcher", "serve", "--metrics-port", "0", env=env, key=False)
    refused(serve, "serve (no key)", "setevnt-dispatcher", NO_KEY)
    junk = tmp_path / "junk.key"
    junk.write_bytes(os.urandom(64))
    bad = run("dispatcher", "serve", "--metrics-port", "0", "--key", str(junk), env=env)
    refused(
        bad,
        "serve --key NOT-A-KEY",
        "setevnt-dispatcher",
        f"signing key {junk}: not a key `setevnt-dispatcher keygen` wrote",
    )
    both = run(
        "dispatcher.cli.setevnt", "--client", "PC1", "--key", str(junk), "--unsigned", env=env
    )
    refused(both, "setevnt --key K --unsigned", "setevnt", BOTH)
    assert not db.exists(), "no storm was planned"


def test_a_storm_rejected_by_its_agents_fails_and_says_why(fleet: Fleet, tmp_path: Path) -> None:
    """Agents trust the session's key; a storm signed with another key is rejected."""
    other = tmp_path / "other.key"
    keys.generate(other)
    fleet.serve()
    fleet.simulate(5, "--provision")
    wait_for(lambda: len(fleet.clients()) == 5, 20, "5 registered clients")
    done = fleet.dispatcher(
        "storm",
        "CCIM32_STARTCYCLE",
        "--all",
        "--yes",
        "--key",
        str(other),
        "--delivery-wait",
        "30s",
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stderr
    line = "5 client(s) rejected the command: bad-signature"
    assert done.stderr.strip().splitlines()[-1] == f"setevnt-dispatcher: error: {line}", done.stderr
    TABLE.append(("storm --key OTHER-KEY (agents reject)", line, 1))
