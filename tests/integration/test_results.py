"""Which clients failed, and why: `results`, `storm --retry-from`, through the real CLI.

Real agents run the exec backend (a program that fails with an exit code and output),
one client answers like a Windows agent whose component crashed (an ack with an NTSTATUS
exit code, published to the real broker for the real collector) and one client never
takes its command, which expires: every reason an operator has to read.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from schemas.codec import encode
from schemas.messages import Ack
from tests.conftest import private_vhost, vhost_amqp_url
from tests.integration.fleet import Fleet
from tests.integration.helpers import (
    Process,
    channel,
    guard_toml,
    queue_depth,
    security_toml,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.broker

# What the failing component prints: a terminal escape sequence, a right-to-left override
# and a last line that says what went wrong.
FAILING = r"printf 'starting\n\033[2J\033[31mred\342\200\256gnp.exe\nERROR disk full\n'; exit 7"
ACCESS_VIOLATION = -1073741819  # 0xC0000005, as a Windows agent reports a crashed component
CRASH_DETAIL = "component crashed <b>&amp;</b>"


def start_exec_agent(url: str, client_id: str, tmp: Path, script: str) -> Process:
    """``setevnt-agent run`` with the exec backend running ``sh -c script`` for
    CCIM32_STARTCYCLE."""
    config = tmp / f"{client_id}.toml"
    config.write_text(
        f'client_id = "{client_id}"\n'
        f"{guard_toml(tmp, client_id)}\n{security_toml()}\n"
        f'[agent]\njournal = "{tmp / (client_id + ".journal")}"\n'
        '[backend]\ntype = "exec"\n[backend.exec]\ntimeout = 30\n[backend.exec.commands]\n'
        f"CCIM32_STARTCYCLE = {json.dumps(['sh', '-c', script])}\n"
    )
    agent = Process(
        [sys.executable, "-m", "agent", "--log-level", "INFO", "run", "--config", str(config)],
        env={"SETEVNT_AMQP_URL": url},
    )
    agent.wait_line(f"agent {client_id} consuming {topology.client_queue(client_id)}")
    return agent


def publish_ack(url: str, ack: Ack) -> None:
    """An ack as an agent sends it (as guest, whom the test collector trusts)."""
    connection, ch = channel(url)
    try:
        ch.basic_publish(
            topology.ACK_EXCHANGE,
            topology.ack_routing_key(ack.client_id),
            encode(ack),
            pika.BasicProperties(type=Ack.WIRE_TYPE, user_id="guest", delivery_mode=2),
        )
    finally:
        connection.close()


def command_ids(db: Path, storm_id: str) -> dict[str, str]:
    """Client id -> command id, straight from the database."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT client_id, command_id FROM commands WHERE storm_id = ?", (storm_id,)
        )
        return dict(rows.fetchall())


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def agents(fleet: Fleet) -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        stop_all(started)


@pytest.fixture
def failed_storm(fleet: Fleet, agents: list[Process], tmp_path: Path) -> str:
    """A failed storm of this test's own, for a test that storms again."""
    return run_failed_storm(fleet, agents, tmp_path)


@pytest.fixture(scope="module")
def read_only_storm(
    broker: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Fleet, str]]:
    """One failed storm, in a virtual host of this module's own, for the tests that only
    read its results (they change nothing, so they can share it)."""
    with private_vhost() as vhost:
        fleet = Fleet(vhost_amqp_url(vhost), tmp_path_factory.mktemp("results"))
        started: list[Process] = []
        try:
            yield fleet, run_failed_storm(fleet, started, fleet.tmp)
        finally:
            stop_all(started)
            fleet.stop()


def run_failed_storm(fleet: Fleet, agents: list[Process], tmp_path: Path) -> str:
    """A finished storm over BAD (exit 7), GOOD (exit 0), WIN (crashed, NTSTATUS) and
    GONE (never takes its command, which expires)."""
    fleet.serve()
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(["BAD", "GOOD", "WIN", "GONE"])
    agents.append(start_exec_agent(fleet.url, "BAD", tmp_path, FAILING))
    agents.append(start_exec_agent(fleet.url, "GOOD", tmp_path, "echo fine"))
    targets = [arg for c in ("BAD", "GOOD", "WIN", "GONE") for arg in ("--client", c)]
    code, outcome = fleet.storm(
        "CCIM32_STARTCYCLE", *targets, "--delivery-wait", "1s", "--ttl", "3s"
    )
    assert code == 1, outcome  # BAD failed
    storm_id: str = outcome["storm_id"]
    win = command_ids(fleet.db, storm_id)["WIN"]
    now = time.time()
    crashed = Ack(
        command_id=win,
        client_id="WIN",
        status="failed",
        received_at=now,
        agent_version="0.1.0",
        component="CCIM32",
        event="STARTCYCLE",
        reason="signal-failed",
        detail=CRASH_DETAIL,
        exit_code=ACCESS_VIOLATION,
        output="Faulting module ntdll.dll\r\nException code: 0xc0000005",
    )
    publish_ack(fleet.url, crashed)
    wait_for(lambda: fleet.status(storm_id)["failed"] == 2, 20, "WIN's failure recorded")
    # GONE's and WIN's commands (ttl 3 s) expire in their queues, nobody took them there:
    # the broker dead-letters them.
    wait_for(lambda: queue_depth(fleet.url, topology.DEAD_QUEUE) == 2, 20, "the expiries")
    return storm_id


def test_results_name_each_clients_status_reason_exit_code_and_output(
    read_only_storm: tuple[Fleet, str],
) -> None:
    fleet, failed_storm = read_only_storm
    shown = fleet.dispatcher("results", failed_storm, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["client"]: row for row in json_lines(shown.stdout)}
    assert set(rows) == {"BAD", "GOOD", "WIN", "GONE"}

    bad = rows["BAD"]
    assert (bad["status"], bad["reason"], bad["exit_code"]) == ("failed", "signal-failed", 7)
    assert bad["detail"] == "exec: sh exited with status 7"
    assert bad["output"].endswith("ERROR disk full\n") and bad["exit_code_hex"] is None
    assert bad["latency_s"] > 0 and bad["event"] == "CCIM32_STARTCYCLE"

    win = rows["WIN"]
    assert (win["status"], win["exit_code"], win["exit_code_hex"]) == (
        "failed",
        ACCESS_VIOLATION,
        "0xC0000005",
    )
    assert win["detail"] == CRASH_DETAIL

    gone = rows["GONE"]
    assert (gone["status"], gone["recorded_status"]) == ("expired", "pending-offline")
    assert "no answer before it expired" in gone["detail"]
    assert (rows["GOOD"]["status"], rows["GOOD"]["exit_code"]) == ("done", 0)

    table = fleet.dispatcher("results", failed_storm, "--status", "failed,expired")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["CLIENT", "STATUS", "REASON", "EXIT", "LATENCY", "DETAIL"]
    by_client = {line.split()[0]: line for line in lines[1:-1]}
    assert set(by_client) == {"BAD", "WIN", "GONE"}
    assert "-1073741819 (0xC0000005)" in by_client["WIN"]
    assert re.search(r"BAD\s+failed\s+signal-failed\s+7\s", by_client["BAD"])
    assert by_client["BAD"].endswith("ERROR disk full")
    assert "expired" in by_client["GONE"] and "no answer" in by_client["GONE"]
    assert lines[-1] == "2 failed, 1 expired of 3"
    # The agents' text cannot move the cursor, clear the screen or turn text around.
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout

    one = fleet.dispatcher("results", bad["command_id"], "--json")
    assert [row["client"] for row in json_lines(one.stdout)] == ["BAD"]


def test_results_refuse_what_they_cannot_show(read_only_storm: tuple[Fleet, str]) -> None:
    fleet, failed_storm = read_only_storm
    missing = fleet.dispatcher("results", "storm-nope")
    assert missing.returncode == 2
    assert "no storm or command storm-nope" in missing.stderr
    bogus = fleet.dispatcher("results", failed_storm, "--status", "failed,bogus")
    assert bogus.returncode == 2
    assert "'bogus' is not a status" in bogus.stderr


def test_retry_from_sends_a_new_storm_to_the_failed_and_expired_clients(
    fleet: Fleet, failed_storm: str
) -> None:
    code, retried = fleet.storm("--retry-from", failed_storm, "--delivery-wait", "1s")
    assert code == 1, retried  # BAD fails again
    assert retried["storm_id"] != failed_storm
    assert retried["event"] == "CCIM32_STARTCYCLE", "the original storm's event"
    assert retried["targets"] == 3
    clients = {row["client"]: row for row in json_lines(
        fleet.dispatcher("results", retried["storm_id"], "--json").stdout
    )}  # fmt: skip
    assert set(clients) == {"BAD", "WIN", "GONE"}
    assert clients["BAD"]["status"] == "failed"

    only = fleet.dispatcher("storm", "--retry-from", failed_storm, "--status", "done", "--json")
    assert json.loads(only.stdout.splitlines()[-1])["targets"] == 1
    assert "retrying 1 client(s) of storm " + failed_storm in only.stderr

    nobody = fleet.dispatcher("storm", "--retry-from", failed_storm, "--status", "rejected")
    assert nobody.returncode == 2
    assert f"no client of storm {failed_storm} is rejected" in nobody.stderr
    alone = fleet.dispatcher("storm", "CCIM32_STARTCYCLE", "--client", "BAD", "--status", "failed")
    assert alone.returncode == 2 and "--status goes with --retry-from" in alone.stderr
