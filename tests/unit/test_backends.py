"""Signal backends, exercised for real: programs run, signals are sent, FIFOs are written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backends import BACKENDS, BackendConfigError, make_backend
from agent.backends.exec import ExecBackend
from agent.backends.file import FileBackend
from agent.backends.posix_signal import SignalBackend
from agent.backends.simulated import SimulatedBackend
from agent.backends.win32_event import Win32EventBackend
from schemas.messages import Command
from schemas.rules import OUTPUT_MAX

EVENT = "CCIM32_STARTCYCLE"


def command(
    component: str = "CCIM32",
    event: str = "STARTCYCLE",
    *,
    command_id: str = "cmd-1",
    silent: bool = False,
) -> Command:
    now = time.time()
    return Command(
        command_id=command_id,
        client_id="PC042",
        component=component,
        event=event,
        silent=silent,
        issued_at=now,
        expires_at=now + 60,
        requested_by="tests",
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for(path: Path, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.01)
    return path.exists()


# -- exec ----------------------------------------------------------------------------------


def test_exec_program_exiting_0_is_ok() -> None:
    backend = ExecBackend({EVENT: python("pass")})
    result = backend.signal(command())
    assert result.ok
    assert result.exit_code == 0
    assert not result.timed_out


def test_exec_non_zero_exit_fails_with_status_and_output() -> None:
    code = (
        "import sys; print('disk full'); sys.stdout.flush(); sys.stderr.write('oops'); sys.exit(3)"
    )
    result = ExecBackend({EVENT: python(code)}).signal(command())
    assert not result.ok
    assert result.exit_code == 3
    assert result.detail is not None and "status 3" in result.detail
    assert result.output is not None
    assert "disk full" in result.output
    assert "oops" in result.output  # stderr is captured with stdout
    assert not result.timed_out


def test_exec_keeps_only_the_tail_of_a_long_output() -> None:
    text = "x" * 5000 + "END"
    code = f"import sys; sys.stdout.write({text!r}); sys.exit(3)"
    result = ExecBackend({EVENT: python(code)}).signal(command())
    assert result.exit_code == 3
    assert result.output is not None
    assert len(result.output) == OUTPUT_MAX == 2048
    assert result.output == text[-2048:]


def test_exec_timeout_kills_the_program() -> None:
    backend = ExecBackend({EVENT: python("import time; time.sleep(30)")}, timeout=0.3)
    started = time.monotonic()
    result = backend.signal(command())
    assert time.monotonic() - started < 10.0  # killed, not left to run its 30 s
    assert result.timed_out
    assert not result.ok
    assert result.exit_code is None
    assert result.detail is not None and "ran over 0.3 s" in result.detail


def test_exec_missing_program_fails_clearly() -> None:
    program = "/nonexistent/setevnt-no-such-program"
    result = ExecBackend({EVENT: [program, "--cycle"]}).signal(command())
    assert not result.ok
    assert result.detail is not None
    assert f"cannot run {program}" in result.detail
    assert "No such file" in result.detail


def test_exec_event_without_a_program_fails() -> None:
    backend = ExecBackend({"SMSAPM32_STARTCYCLE": python("pass")})
    result = backend.signal(command())
    assert not result.ok
    assert result.detail == f"exec: no program configured for {EVENT}"


@pytest.mark.parametrize("silent", [True, False])
def test_exec_passes_the_command_in_the_environment(silent: bool) -> None:
    code = (
        "import os; e = os.environ; print(e['SETEVNT_COMMAND_ID'], e['SETEVNT_SILENT'], "
        "e['SETEVNT_COMPONENT'], e['SETEVNT_EVENT'])"
    )
    backend = ExecBackend.from_options({"commands": {EVENT: python(code)}})
    result = backend.signal(command(command_id="cmd-env-7", silent=silent))
    assert result.ok
    assert result.output == f"cmd-env-7 {int(silent)} CCIM32 STARTCYCLE\n"


def test_exec_programs_get_a_minimal_environment_never_the_agent_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SETEVNT_AMQP_URL", "amqp://PC042:broker-password@broker/%2F")
    monkeypatch.setenv("SETEVNT_CLIENT_ID", "PC042")
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("SITE_PROXY", "http://proxy:3128")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_MESSAGES", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    printing = python("import json, os; print(json.dumps(dict(os.environ)))")
    backend = ExecBackend.from_options({"commands": {EVENT: printing}, "env": ["SITE_PROXY"]})
    result = backend.signal(command(command_id="cmd-env-1"))
    assert result.ok and result.output is not None
    env = json.loads(result.output)
    assert "broker-password" not in result.output
    assert not {"SETEVNT_AMQP_URL", "SETEVNT_CLIENT_ID", "HOME"} & set(env)
    assert env["SITE_PROXY"] == "http://proxy:3128"  # listed in [backend.exec] env
    assert (env["LANG"], env["LC_MESSAGES"], env["TZ"]) == ("C.UTF-8", "C.UTF-8", "UTC")
    assert env["PATH"] == os.environ["PATH"]
    assert env["SETEVNT_COMMAND_ID"] == "cmd-env-1"
    allowed = {"PATH", "LANG", "TZ", "SITE_PROXY", "SETEVNT_COMMAND_ID", "SETEVNT_COMPONENT"}
    allowed |= {"SETEVNT_EVENT", "SETEVNT_SILENT"}
    assert {name for name in env if not name.startswith("LC_")} <= allowed


@pytest.mark.parametrize("name", ["SETEVNT_AMQP_URL", "setevnt_client_id"])
def test_exec_refuses_to_pass_the_agent_settings(name: str) -> None:
    with pytest.raises(BackendConfigError, match="may not pass"):
        ExecBackend.from_options({"commands": {EVENT: python("pass")}, "env": [name]})


@pytest.mark.parametrize(
    "options",
    [
        {"commands": {EVENT: []}},
        {"commands": {EVENT: "/bin/true"}},  # a string, not an argv list
        {"commands": {EVENT: ["/bin/true", 1]}},
        {"commands": {EVENT: ["/bin/true"]}, "timeout": 0},
        {"commands": {EVENT: ["/bin/true"]}, "timeout": -5},
    ],
)
def test_exec_rejects_bad_configuration(options: dict[str, object]) -> None:
    with pytest.raises(BackendConfigError, match="exec: "):
        ExecBackend.from_options(options)


# -- signal --------------------------------------------------------------------------------

CHILD = """
import pathlib, signal, sys, time

hit, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def on_usr1(signum, frame):
    hit.write_text(signal.Signals(signum).name)
    raise SystemExit(0)

signal.signal(signal.SIGUSR1, on_usr1)
ready.write_text("ready")
time.sleep(30)
raise SystemExit(5)
"""


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A process that writes ``hit`` when it gets SIGUSR1, and its pidfile."""
    hit, ready, pidfile = tmp_path / "hit", tmp_path / "ready", tmp_path / "component.pid"
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(hit), str(ready)])
    try:
        assert wait_for(ready), "the child never installed its signal handler"
        pidfile.write_text(f"{process.pid}\n")
        yield process, pidfile, hit
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


@pytest.mark.parametrize("name", [None, "USR1", "sigusr1"])
def test_signal_sends_the_signal_to_the_pid_in_the_pidfile(
    child: tuple[subprocess.Popen[bytes], Path, Path], name: str | None
) -> None:
    process, pidfile, hit = child
    spec = {"pidfile": str(pidfile)} if name is None else {"pidfile": str(pidfile), "signal": name}
    backend = SignalBackend.from_options({"events": {EVENT: spec}})
    result = backend.signal(command())
    assert result.ok, result.detail
    assert result.detail == f"signal: sent SIGUSR1 to pid {process.pid}"
    assert process.wait(timeout=5) == 0
    assert hit.read_text() == "SIGUSR1"


def test_signal_missing_pidfile_fails(tmp_path: Path) -> None:
    pidfile = tmp_path / "absent.pid"
    backend = SignalBackend.from_options({"events": {EVENT: {"pidfile": str(pidfile)}}})
    result = backend.signal(command())
    assert not result.ok
    assert result.detail is not None and str(pidfile) in result.detail


@pytest.mark.parametrize("content", ["not-a-pid", ""])
def test_signal_unreadable_pidfile_fails(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "component.pid"
    pidfile.write_text(content)
    backend = SignalBackend.from_options({"events": {EVENT: {"pidfile": str(pidfile)}}})
    assert not backend.signal(command()).ok


@pytest.mark.parametrize("content", ["0", "-1"])
def test_signal_never_signals_a_process_group(tmp_path: Path, content: str) -> None:
    # kill(0, sig) would hit the agent's own process group, kill(-1, sig) every process.
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        pidfile = tmp_path / "component.pid"
        pidfile.write_text(content)
        backend = SignalBackend.from_options({"events": {EVENT: {"pidfile": str(pidfile)}}})
        result = backend.signal(command())
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not result.ok
    assert received == []


def test_signal_event_without_a_pidfile_fails() -> None:
    result = SignalBackend.from_options({"events": {}}).signal(command())
    assert not result.ok
    assert result.detail == f"signal: no pidfile configured for {EVENT}"


def test_signal_unknown_signal_name_is_a_config_error() -> None:
    with pytest.raises(BackendConfigError, match="unknown signal 'NOPE'"):
        SignalBackend.from_options({"events": {EVENT: {"pidfile": "/run/x.pid", "signal": "NOPE"}}})


def test_signal_event_spec_needs_a_pidfile() -> None:
    with pytest.raises(BackendConfigError, match="needs a pidfile"):
        SignalBackend.from_options({"events": {EVENT: {"signal": "USR1"}}})


# -- file ----------------------------------------------------------------------------------


def test_file_directory_writes_a_trigger_file(tmp_path: Path) -> None:
    backend = FileBackend.from_options({"directory": str(tmp_path)})
    result = backend.signal(command(command_id="cmd-file-1"))
    assert result.ok
    assert (tmp_path / f"{EVENT}.trigger").read_text() == "cmd-file-1\n"
    assert [p.name for p in tmp_path.iterdir()] == [f"{EVENT}.trigger"]


def test_file_directory_missing_fails(tmp_path: Path) -> None:
    result = FileBackend(directory=str(tmp_path / "absent")).signal(command())
    assert not result.ok
    assert result.detail is not None and "No such file" in result.detail


def test_file_fifo_without_a_reader_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = FileBackend(fifo=str(fifo)).signal(command())
    assert time.monotonic() - started < 5.0  # fails instead of blocking for a reader
    assert not result.ok
    assert result.detail is not None and "no component is reading it" in result.detail


def test_file_fifo_reader_receives_the_event_name(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = FileBackend.from_options({"fifo": str(fifo)}).signal(command())
        assert result.ok, result.detail
        assert os.read(reader, 256) == b"CCIM32_STARTCYCLE\n"
    finally:
        os.close(reader)


def test_file_never_follows_a_link_planted_at_the_trigger(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root:*:19000:0:99999:7:::\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{EVENT}.trigger").symlink_to(victim)
    result = FileBackend(directory=str(spool)).signal(command())
    assert not result.ok
    assert result.detail is not None and "symbolic link" in result.detail
    assert victim.read_text() == "root:*:19000:0:99999:7:::\n"


def test_file_refuses_a_directory_any_user_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # /tmp-like
    with pytest.raises(BackendConfigError, match="writable by any user"):
        FileBackend(directory=str(shared))
    spool = tmp_path / "spool"
    spool.mkdir()
    backend = FileBackend(directory=str(spool))
    spool.chmod(0o777)  # opened up after the agent started
    result = backend.signal(command())
    assert not result.ok
    assert result.detail is not None and "writable by any user" in result.detail
    assert list(spool.iterdir()) == []


def test_file_writes_a_trigger_only_as_a_regular_file_and_an_event_only_into_a_fifo(
    tmp_path: Path,
) -> None:
    planted = tmp_path / f"{EVENT}.trigger"
    os.mkfifo(planted)
    reader = os.open(planted, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = FileBackend(directory=str(tmp_path)).signal(command())
        assert not result.ok and result.detail is not None and "regular file" in result.detail
    finally:
        os.close(reader)
    regular = tmp_path / "events"
    regular.write_text("kept\n")
    result = FileBackend(fifo=str(regular)).signal(command())
    assert not result.ok and result.detail is not None and "not a FIFO" in result.detail
    assert regular.read_text() == "kept\n"


@pytest.mark.parametrize(
    "options",
    [{}, {"directory": "/tmp", "fifo": "/tmp/fifo"}, {"directory": ""}, {"fifo": ""}],
)
def test_file_needs_exactly_one_of_directory_or_fifo(options: dict[str, str]) -> None:
    with pytest.raises(BackendConfigError, match="exactly one"):
        FileBackend.from_options(options)


# -- win32-event ---------------------------------------------------------------------------


def test_win32_event_module_imports_everywhere() -> None:
    assert BACKENDS["win32-event"] is Win32EventBackend
    assert Win32EventBackend.name == "win32-event"


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal outside Windows")
def test_win32_event_refuses_to_start_outside_windows() -> None:
    with pytest.raises(BackendConfigError, match="Windows"):
        Win32EventBackend.from_options({"prefix": "Global\\"})
    with pytest.raises(BackendConfigError, match="Windows"):
        make_backend("win32-event", {})


# -- simulated -----------------------------------------------------------------------------


def read_record(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_simulated_records_start_and_finish(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    backend = SimulatedBackend.from_options({"duration": 0, "record": str(record)})
    assert backend.signal(command(command_id="cmd-a")).ok
    assert backend.signal(command("SMSAPM32", "CLOSE", command_id="cmd-b", silent=True)).ok
    lines = read_record(record)
    assert [(line["phase"], line["command_id"]) for line in lines] == [
        ("start", "cmd-a"),
        ("finish", "cmd-a"),
        ("start", "cmd-b"),
        ("finish", "cmd-b"),
    ]
    assert lines[2]["event"] == "SMSAPM32_CLOSE"
    assert lines[2]["silent"] is True
    assert all(line["client_id"] == "PC042" and line["failed"] is False for line in lines)
    assert all(line["pid"] == os.getpid() for line in lines)


def test_simulated_failure_rate_one_always_fails(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    backend = SimulatedBackend(duration=0, failure_rate=1.0, record=str(record))
    results = [backend.signal(command(command_id=f"cmd-{n}")) for n in range(20)]
    assert not any(result.ok for result in results)
    assert results[0].detail == "simulated CCIM32 failure"
    finishes = [line for line in read_record(record) if line["phase"] == "finish"]
    assert len(finishes) == 20
    assert all(line["failed"] is True for line in finishes)


def test_simulated_failure_rate_zero_never_fails() -> None:
    backend = SimulatedBackend(duration=0, failure_rate=0.0)
    assert all(backend.signal(command(command_id=f"cmd-{n}")).ok for n in range(50))


def test_simulated_seed_makes_failures_reproducible() -> None:
    def outcomes() -> list[bool]:
        backend = SimulatedBackend(duration=0, failure_rate=0.5, seed=7)
        return [backend.signal(command(command_id=f"cmd-{n}")).ok for n in range(40)]

    first = outcomes()
    assert first == outcomes()
    assert True in first and False in first


def timed(backend: SimulatedBackend, component: str, event: str) -> float:
    started = time.monotonic()
    assert backend.signal(command(component, event)).ok
    return time.monotonic() - started


def test_simulated_per_event_durations_override_the_default() -> None:
    backend = SimulatedBackend.from_options(
        {"duration": 0.25, "durations": {"CCIM32_STARTCYCLE": 0, "SMSAPM32": 0, "CQMGR32": 0.25}}
    )
    assert timed(backend, "CCIM32", "STARTCYCLE") < 0.15  # COMPONENT_EVENT entry
    assert timed(backend, "SMSAPM32", "CLOSE") < 0.15  # COMPONENT entry
    assert timed(backend, "SMSMON32", "STARTCYCLE") >= 0.25  # the default


def test_simulated_event_duration_wins_over_component_duration() -> None:
    backend = SimulatedBackend(duration=0, durations={"CCIM32": 0.25, "CCIM32_CLOSE": 0})
    assert timed(backend, "CCIM32", "CLOSE") < 0.15
    assert timed(backend, "CCIM32", "STARTCYCLE") >= 0.25


@pytest.mark.parametrize(
    "options",
    [
        {"failure_rate": 1.5},
        {"failure_rate": -0.1},
        {"duration": -1},
        {"durations": {EVENT: -0.5}},
    ],
)
def test_simulated_rejects_bad_configuration(options: dict[str, object]) -> None:
    with pytest.raises(BackendConfigError, match="simulated: "):
        SimulatedBackend.from_options(options)


# -- make_backend --------------------------------------------------------------------------


def test_make_backend_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(BackendConfigError, match="unknown backend 'carrier-pigeon'") as caught:
        make_backend("carrier-pigeon", {})
    for kind in ("exec", "signal", "file", "win32-event", "simulated"):
        assert kind in str(caught.value)


def test_make_backend_builds_the_named_kind(tmp_path: Path) -> None:
    assert isinstance(make_backend("simulated", {"duration": 0}), SimulatedBackend)
    assert isinstance(make_backend("file", {"directory": str(tmp_path)}), FileBackend)
    assert isinstance(make_backend("exec", {"commands": {EVENT: ["/bin/true"]}}), ExecBackend)
    assert isinstance(make_backend("signal", {}), SignalBackend)
