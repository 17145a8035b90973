"""End to end against the real broker and real agent processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from schemas import Command, encode
from schemas.messages import AckStatus
from tests.integration.helpers import (
    ROOT,
    channel,
    collect_acks,
    final,
    queue_depth,
    records,
    signed,
    start_agent,
    wait_for,
)
from tests.integration.test_results import start_exec_agent

pytestmark = pytest.mark.broker


def setevnt(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli.setevnt", "--url", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_trigger_is_acked_done_with_latency(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        done = setevnt(amqp_url, "--client", "PC001", "/q", "--wait", "20", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert {r["event"] for r in rows} == {"CCIM32_STARTCYCLE", "CQMGR32_STARTCYCLE"}
        assert all(r["status"] == "done" for r in rows)
        assert all(0 < r["latency_s"] < 20 for r in rows)
        signalled = [r for r in records(tmp_path / "PC001.record") if r["phase"] == "finish"]
        assert sorted(r["event"] for r in signalled) == ["CCIM32_STARTCYCLE", "CQMGR32_STARTCYCLE"]
        assert all(r["silent"] for r in signalled)
    finally:
        agent.terminate()


def test_cli_table_names_each_command_and_sums_them_up(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_exec_agent(amqp_url, "PC001", tmp_path, "echo broken; exit 7")
    try:
        argv = ("--client", "PC001", "--client", "NOSUCHPC", "CCIM32_STARTCYCLE", "--wait", "20")
        shown = setevnt(amqp_url, *argv)
        as_json = setevnt(amqp_url, *argv, "--json")
    finally:
        agent.terminate()
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["CLIENT", "EVENT", "COMMAND", "STATUS", "LATENCY", "DETAIL"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"PC001", "NOSUCHPC"}
    ids = {client: line.split()[2] for client, line in rows.items()}
    assert (
        all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids.values()) and len(set(ids.values())) == 2
    )
    assert rows["PC001"].split()[3] == "failed" and "(exit code 7)" in rows["PC001"]
    assert rows["NOSUCHPC"].split()[3] == "unroutable"
    assert lines[-1] == "1 failed, 1 unroutable of 2"

    answered = {row["client"]: row for row in map(json.loads, as_json.stdout.splitlines())}
    failed = answered["PC001"]
    assert (failed["status"], failed["reason"], failed["exit_code"]) == (
        "failed",
        "signal-failed",
        7,
    )
    assert failed["detail"] == "signal-failed exec: sh exited with status 7"
    assert failed["exit_code_hex"] is None and answered["NOSUCHPC"]["exit_code"] is None


def test_unknown_client_is_reported_unroutable(amqp_url: str) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
        receipts = dispatcher.trigger(["PC001", "NOSUCHPC"], "CCIM32_STARTCYCLE")
    status = {r.client_id: r.status for r in receipts}
    assert status == {"PC001": "sent", "NOSUCHPC": "unroutable"}

    shown = setevnt(amqp_url, "--client", "NOSUCHPC", "cq", "--wait", "2")
    assert shown.returncode == 1
    assert "unroutable" in shown.stdout and "NOSUCHPC" in shown.stdout


def test_cli_usage_errors_exit_2_and_list_valid_events(amqp_url: str) -> None:
    shown = setevnt(amqp_url, "--client", "PC001", "ccim32_startcycle")
    assert shown.returncode == 2
    assert "case-sensitive" in shown.stderr and "CCIM32_STARTCYCLE" in shown.stderr
    assert setevnt(amqp_url, "--client", "bad id", "cq").returncode == 2


def test_cli_reports_timeout_when_no_agent_answers(amqp_url: str) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC009"])
    shown = setevnt(amqp_url, "--client", "PC009", "cq", "--wait", "1", "--json")
    assert shown.returncode == 1
    assert json.loads(shown.stdout)["status"] == "timeout"
    assert queue_depth(amqp_url, topology.client_queue("PC009")) == 1  # still queued


def _publish_raw(url: str, client_id: str, body: bytes, message_id: str) -> None:
    connection, ch = channel(url)
    try:
        ch.basic_publish(
            "",
            topology.client_queue(client_id),
            body,
            pika.BasicProperties(message_id=message_id, delivery_mode=2, headers=signed(body)),
        )
    finally:
        connection.close()


def _command(client_id: str, **changes: object) -> Command:
    now = time.time()
    fields: dict[str, object] = {
        "command_id": f"cmd-{time.monotonic_ns()}",
        "client_id": client_id,
        "component": "CCIM32",
        "event": "STARTCYCLE",
        "silent": False,
        "issued_at": now,
        "expires_at": now + 60,
        "requested_by": "test",
    }
    fields.update(changes)
    return Command(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"\xc1garbage", "rejected", "bad-msgpack"),
        (b"\x93\x01\x02\x03", "rejected", "bad-message"),
        ("wrong-client", "rejected", "wrong-client"),
        ("expired", "expired", "expired"),
        ("unknown-component", "rejected", "unknown-component"),
        ("wrong-platform", "rejected", "wrong-platform"),
    ],
)
def test_invalid_input_is_dead_lettered_and_agent_keeps_serving(
    amqp_url: str, tmp_path: Path, body: bytes | str, status: str, reason: str
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    if isinstance(body, str):
        now = time.time()
        body = encode(
            {
                "wrong-client": _command("PC002"),
                "expired": _command("PC001", issued_at=now - 120, expires_at=now - 60),
                "unknown-component": _command("PC001", component="NOTACOMP"),
                "wrong-platform": _command("PC001", component="CLISVC95"),
            }[body]
        )
    _publish_raw(amqp_url, "PC001", body, "bad-1")
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        with Dispatcher(amqp_url) as dispatcher:
            good = dispatcher.trigger(["PC001"], "CQMGR32_STARTCYCLE")[0]
        acks = collect_acks(amqp_url, lambda a: bool(final(a, good.command_id)), 20)
        refused = [a for a in acks if a.status != "done"]
        assert len(refused) == 1
        assert (refused[0].status, refused[0].reason) == (status, reason)
        assert refused[0].detail
        assert final(acks, good.command_id)[0].status == AckStatus.DONE
        assert queue_depth(amqp_url, topology.DEAD_QUEUE) == 1
        finished = [r for r in records(tmp_path / "PC001.record") if r["phase"] == "finish"]
        assert [r["command_id"] for r in finished] == [good.command_id]
    finally:
        agent.terminate()


def test_sigkill_mid_command_is_redelivered_and_completes_once(
    amqp_url: str, tmp_path: Path
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    slow = {"durations": {"CCIM32_STARTCYCLE": 2.0}}
    agent = start_agent(amqp_url, "PC001", tmp_path, simulated=slow)
    record = tmp_path / "PC001.record"
    with Dispatcher(amqp_url) as dispatcher:
        command = dispatcher.trigger(["PC001"], "CCIM32_STARTCYCLE")[0]
    wait_for(lambda: any(r["phase"] == "start" for r in records(record)), 15, "signal start")
    agent.kill()
    agent = start_agent(amqp_url, "PC001", tmp_path, simulated=slow)
    try:
        acks = collect_acks(amqp_url, lambda a: bool(final(a, command.command_id)), 30)
        time.sleep(0.5)  # room for a duplicate to show up, if there were one
        acks += collect_acks(amqp_url, lambda a: True, 1)
        assert [a.status for a in final(acks, command.command_id)] == ["done"]
        phases = [r["phase"] for r in records(record)]
        assert phases == ["start", "start", "finish"]  # the killed run never finished
    finally:
        agent.terminate()


def test_redelivered_completed_command_is_not_signalled_again(
    amqp_url: str, tmp_path: Path
) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        command = _command("PC001")
        _publish_raw(amqp_url, "PC001", encode(command), command.command_id)
        _publish_raw(amqp_url, "PC001", encode(command), command.command_id)
        acks = collect_acks(amqp_url, lambda a: len(final(a, command.command_id)) == 2, 20)
        first, second = final(acks, command.command_id)
        assert first == second  # the journal re-sent the original ack
        starts = [r for r in records(tmp_path / "PC001.record") if r["phase"] == "start"]
        assert len(starts) == 1
    finally:
        agent.terminate()


def test_sigterm_finishes_the_command_in_hand(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    slow = {"durations": {"CCIM32_STARTCYCLE": 1.5}}
    agent = start_agent(amqp_url, "PC001", tmp_path, simulated=slow)
    record = tmp_path / "PC001.record"
    with Dispatcher(amqp_url) as dispatcher:
        command = dispatcher.trigger(["PC001"], "CCIM32_STARTCYCLE")[0]
    wait_for(lambda: records(record), 15, "signal start")
    assert agent.terminate(timeout=15) == 0
    assert [r["phase"] for r in records(record)] == ["start", "finish"]
    acks = collect_acks(amqp_url, lambda a: bool(final(a, command.command_id)), 10)
    assert final(acks, command.command_id)[0].status == "done"
