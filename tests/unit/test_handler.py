"""One delivery through the agent's handler, with the simulated backend and a real journal."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from agent.backends import SignalResult
from agent.backends.exec import ExecBackend
from agent.backends.simulated import SimulatedBackend
from agent.config import AgentConfig
from agent.handler import Delivery, Handler, Run, Settle
from agent.journal import Journal
from schemas import Ack, Command, decode, encode
from schemas.catalog import DEFAULT_CATALOG, Catalog
from schemas.rules import OUTPUT_MAX

CLIENT = "PC042"
DURATION = 0.05


def command(
    component: str = "CCIM32",
    event: str = "STARTCYCLE",
    *,
    command_id: str = "cmd-1",
    client_id: str = CLIENT,
    issued_at: float | None = None,
    expires_at: float | None = None,
    not_before: float | None = None,
) -> Command:
    now = time.time()
    return Command(
        command_id=command_id,
        client_id=client_id,
        component=component,
        event=event,
        silent=False,
        issued_at=now if issued_at is None else issued_at,
        expires_at=now + 300 if expires_at is None else expires_at,
        requested_by="tests",
        storm_id="storm-1",
        not_before=not_before,
    )


def delivery(body: bytes, message_id: str | None = "msg-1") -> Delivery:
    return Delivery(body, message_id, time.time(), time.monotonic())


def make_handler(
    tmp_path: Path,
    *,
    platform: str = "nt",
    failure_rate: float = 0.0,
    catalog: Catalog = DEFAULT_CATALOG,
) -> tuple[Handler, Path]:
    record = tmp_path / "record.jsonl"
    backend = SimulatedBackend(duration=DURATION, failure_rate=failure_rate, record=str(record))
    config = AgentConfig(client_id=CLIENT, platform=platform, catalog=catalog)
    return Handler(config, backend, Journal(None)), record


def starts(record: Path) -> list[str]:
    if not record.exists():
        return []
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return [line["command_id"] for line in lines if line["phase"] == "start"]


def run(handler: Handler, cmd: Command) -> tuple[Delivery, bytes]:
    incoming = delivery(encode(cmd))
    verdict = handler.admit(incoming)
    assert isinstance(verdict, Run)
    body = handler.execute(verdict.command, incoming)
    assert body is not None
    return incoming, body


def rejected(handler: Handler, body: bytes, message_id: str | None = "msg-1") -> Ack:
    verdict = handler.admit(delivery(body, message_id))
    assert isinstance(verdict, Settle)
    assert verdict.dead_letter is True
    assert verdict.ack is not None
    return decode(verdict.ack, Ack)


def test_a_valid_command_runs_and_is_acked_done(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    cmd = command()
    incoming = delivery(encode(cmd))
    verdict = handler.admit(incoming)
    assert isinstance(verdict, Run)
    assert verdict.command == cmd
    assert starts(record) == []  # admit only decides; nothing is signalled yet

    body = handler.execute(verdict.command, incoming)
    assert body is not None
    ack = decode(body, Ack)
    assert ack.status == "done"
    assert ack.reason is None
    assert (ack.command_id, ack.client_id) == ("cmd-1", CLIENT)
    assert (ack.component, ack.event, ack.storm_id) == ("CCIM32", "STARTCYCLE", "storm-1")
    assert ack.issued_at == cmd.issued_at
    assert ack.received_at == incoming.received_at
    assert ack.run_seconds is not None and ack.run_seconds >= DURATION
    assert ack.total_seconds is not None and ack.total_seconds >= ack.run_seconds
    assert ack.wait_seconds is not None and ack.wait_seconds >= 0
    assert ack.started_at is not None and ack.finished_at is not None
    assert ack.received_at <= ack.started_at <= ack.finished_at
    assert starts(record) == ["cmd-1"]


def test_executing_the_same_command_twice_signals_once(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    incoming, first = run(handler, command())
    second = handler.execute(command(), incoming)
    assert second == first
    assert starts(record) == ["cmd-1"]
    assert handler.journal.get("cmd-1") == first


def test_a_redelivery_racing_its_first_run_signals_once(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    cmd = command()
    results: list[bytes] = []

    def execute() -> None:
        body = handler.execute(cmd, delivery(encode(cmd)))
        assert body is not None
        results.append(body)

    threads = [threading.Thread(target=execute) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(results) == 2
    assert results[0] == results[1]
    assert starts(record) == ["cmd-1"]


def test_a_done_command_is_answered_from_the_journal(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    _, body = run(handler, command())
    verdict = handler.admit(delivery(encode(command())))
    assert verdict == Settle(body, dead_letter=False)
    assert starts(record) == ["cmd-1"]


@pytest.mark.parametrize(
    ("message_id", "expected_id"),
    [("msg-7", "msg-7"), (None, ""), ("not valid!", ""), ("msg-7\n", ""), ("x" * 65, "")],
)
def test_garbage_is_rejected_and_dead_lettered(
    tmp_path: Path, message_id: str | None, expected_id: str
) -> None:
    handler, record = make_handler(tmp_path)
    ack = rejected(handler, b"\xc1garbage", message_id)
    assert ack.status == "rejected"
    assert ack.reason == "bad-msgpack"
    assert ack.command_id == expected_id
    assert ack.client_id == CLIENT
    assert ack.component is None
    assert starts(record) == []


def test_msgpack_that_is_not_a_command_is_a_bad_message(tmp_path: Path) -> None:
    handler, _ = make_handler(tmp_path)
    ack = rejected(handler, msgpack.packb({"t": "command", "v": [1, 0], "command_id": "c"}))
    assert ack.status == "rejected"
    assert ack.reason == "bad-message"
    assert ack.detail is not None and "missing fields" in ack.detail


def test_a_command_for_another_client_is_rejected(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    ack = rejected(handler, encode(command(client_id="PC999", command_id="cmd-9")))
    assert ack.status == "rejected"
    assert ack.reason == "wrong-client"
    assert ack.command_id == "cmd-9"
    assert ack.client_id == CLIENT
    assert (ack.component, ack.event) == ("CCIM32", "STARTCYCLE")
    assert starts(record) == []


def test_an_expired_command_is_acked_expired(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path)
    now = time.time()
    ack = rejected(handler, encode(command(issued_at=now - 120, expires_at=now - 60)))
    assert ack.status == "expired"
    assert ack.reason == "expired"
    assert starts(record) == []


@pytest.mark.parametrize(("component", "event"), [("NOSUCH", "STARTCYCLE"), ("CCIM32", "REBOOT")])
def test_an_unknown_component_event_is_rejected(tmp_path: Path, component: str, event: str) -> None:
    handler, record = make_handler(tmp_path)
    ack = rejected(handler, encode(command(component, event)))
    assert ack.status == "rejected"
    assert ack.reason == "unknown-component"
    assert ack.detail is not None and f"{component}_{event}" in ack.detail
    assert starts(record) == []


def test_a_site_component_is_accepted(tmp_path: Path) -> None:
    catalog = DEFAULT_CATALOG.extended(
        Catalog.components_from_config([{"name": "CLISETUP", "events": ["STARTCYCLE"]}])
    )
    handler, record = make_handler(tmp_path, catalog=catalog)
    _, body = run(handler, command("CLISETUP", "STARTCYCLE"))
    assert decode(body, Ack).status == "done"
    assert starts(record) == ["cmd-1"]


@pytest.mark.parametrize(("component", "platform"), [("CLISVC95", "nt"), ("CLISVCL", "win9x")])
def test_a_component_of_the_other_platform_is_rejected(
    tmp_path: Path, component: str, platform: str
) -> None:
    handler, record = make_handler(tmp_path, platform=platform)
    ack = rejected(handler, encode(command(component)))
    assert ack.status == "rejected"
    assert ack.reason == "wrong-platform"
    assert starts(record) == []


def test_clisvc95_runs_on_a_win9x_agent(tmp_path: Path) -> None:
    handler, _ = make_handler(tmp_path, platform="win9x")
    assert isinstance(handler.admit(delivery(encode(command("CLISVC95")))), Run)


def test_a_backend_failure_is_acked_failed_and_journalled(tmp_path: Path) -> None:
    handler, record = make_handler(tmp_path, failure_rate=1.0)
    incoming, body = run(handler, command())
    ack = decode(body, Ack)
    assert ack.status == "failed"
    assert ack.reason == "signal-failed"
    assert ack.detail == "simulated CCIM32 failure"
    assert handler.execute(command(), incoming) == body  # not retried by a redelivery
    assert starts(record) == ["cmd-1"]


def test_a_backend_timeout_is_acked_signal_timeout(tmp_path: Path) -> None:
    backend = ExecBackend(
        {"CCIM32_STARTCYCLE": [sys.executable, "-c", "import time; time.sleep(30)"]}, timeout=0.2
    )
    handler = Handler(AgentConfig(client_id=CLIENT), backend, Journal(None))
    _, body = run(handler, command())
    ack = decode(body, Ack)
    assert ack.status == "failed"
    assert ack.reason == "signal-timeout"


class Raising:
    """A backend with a bug: it raises instead of returning a result."""

    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def signal(self, command: Command) -> SignalResult:
        self.calls += 1
        raise RuntimeError("the component's pipe broke")


class Returning:
    """A backend returning a fixed result, whatever it holds."""

    name = "returning"

    def __init__(self, result: SignalResult) -> None:
        self.result = result

    def signal(self, command: Command) -> SignalResult:
        return self.result


def test_a_backend_that_raises_is_answered_failed_once_and_journalled() -> None:
    backend = Raising()
    handler = Handler(AgentConfig(client_id=CLIENT), backend, Journal(None))
    incoming, body = run(handler, command())
    ack = decode(body, Ack)
    assert (ack.status, ack.reason) == ("failed", "signal-failed")
    assert ack.detail is not None and "RuntimeError: the component's pipe broke" in ack.detail
    assert handler.journal.get("cmd-1") == body
    assert handler.execute(command(), incoming) == body  # a redelivery does not run it again
    assert backend.calls == 1


def test_an_ack_that_cannot_be_built_is_answered_failed_saying_why() -> None:
    result = SignalResult(True, detail="ran", exit_code=0, output="x" * (OUTPUT_MAX + 1))
    handler = Handler(AgentConfig(client_id=CLIENT), Returning(result), Journal(None))
    _, body = run(handler, command())
    ack = decode(body, Ack)
    assert (ack.status, ack.reason) == ("failed", "signal-failed")
    assert ack.detail is not None and "output" in ack.detail
    assert handler.journal.get("cmd-1") == body


def test_anything_failing_in_execute_is_answered_failed(tmp_path: Path) -> None:
    handler, _ = make_handler(tmp_path)

    class Broken(Journal):
        def record(self, command_id: str, ack: bytes, expires_at: float) -> None:
            raise OSError(28, "No space left on device")

    handler.journal = Broken(None)
    _, body = run(handler, command())
    ack = decode(body, Ack)
    assert (ack.status, ack.reason) == ("failed", "signal-failed")
    assert ack.detail is not None and "No space left on device" in ack.detail


@pytest.mark.parametrize(
    ("code", "carried", "noted"),
    [
        (3221225477, -1073741819, False),  # 0xC0000005, an access violation on Windows
        (0xFFFFFFFF, -1, False),
        (-9, -9, False),  # killed by SIGKILL on POSIX
        (2**40, None, True),
        (-(2**31) - 1, None, True),
    ],
)
def test_exit_codes_are_carried_as_windows_reports_them_and_never_break_the_ack(
    code: int, carried: int | None, noted: bool
) -> None:
    result = SignalResult(False, detail="crashed", exit_code=code)
    handler = Handler(AgentConfig(client_id=CLIENT), Returning(result), Journal(None))
    _, body = run(handler, command())
    ack = decode(body, Ack)
    assert (ack.status, ack.reason, ack.exit_code) == ("failed", "signal-failed", carried)
    assert ack.detail is not None and (str(code) in ack.detail) == noted


LIFETIME = 86400.0


@pytest.mark.parametrize(
    ("times", "status", "reason", "named"),
    [
        ({"issued_at": 0.0, "expires_at": LIFETIME + 60}, "rejected", "not-permitted", "lives"),
        ({"not_before": 400.0, "expires_at": 300.0}, "expired", "expired", "after it expires"),
        (
            {"issued_at": 200.0, "expires_at": 200.0 + LIFETIME, "not_before": LIFETIME + 100},
            "rejected",
            "not-permitted",
            "starts in",
        ),
    ],
)
def test_commands_beyond_the_agent_lifetime_are_refused_naming_the_limit(
    tmp_path: Path, times: dict[str, float], status: str, reason: str, named: str
) -> None:
    handler, record = make_handler(tmp_path)
    now = time.time()
    fields = {"issued_at": 0.0, "expires_at": 300.0, **times}
    relative = {k: now + v for k, v in fields.items()}
    ack = rejected(handler, encode(command(**relative)))
    assert (ack.status, ack.reason) == (status, reason)
    assert ack.detail is not None and named in ack.detail
    if reason == "not-permitted":
        assert "max_command_lifetime" in ack.detail
    assert starts(record) == []


def test_the_lifetime_limit_is_the_agent_setting(tmp_path: Path) -> None:
    config = AgentConfig(client_id=CLIENT, max_command_lifetime=60.0)
    handler = Handler(config, SimulatedBackend(duration=0), Journal(None))
    now = time.time()
    ack = rejected(handler, encode(command(issued_at=now, expires_at=now + 120)))
    assert ack.reason == "not-permitted" and ack.detail is not None and "60 s" in ack.detail
    assert isinstance(handler.admit(delivery(encode(command(expires_at=now + 60)))), Run)
