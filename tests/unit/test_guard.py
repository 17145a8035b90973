"""Guard probes seen busy and free, the policy, the [guard] table, and the hold/check CLI."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from agent.config import DEFAULT_DISRUPTIVE, ConfigError, GuardConfig, load
from agent.guard import (
    CommandProbe,
    DistributionLock,
    Guard,
    MarkerProbe,
    ProcessProbe,
    lock_holders,
)
from tests.integration.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "agent.example.toml"


def agent_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "distribution.lock"


@pytest.fixture
def held_by_hold(lock_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real distribution: ``setevnt-agent hold -- sleep 30``, holding the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "agent", "hold", "--lock", str(lock_path), "--", "sleep", "30"],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 10
        while holder.pid not in (lock_holders(lock_path) if lock_path.exists() else []):
            assert time.monotonic() < deadline, "hold did not take the lock"
            time.sleep(0.02)
        yield holder
    finally:
        holder.terminate()
        holder.wait(timeout=10)


# -- lock ---------------------------------------------------------------------------------


def test_lock_probe_is_free_without_a_lock_file_and_when_nobody_holds_it(lock_path: Path) -> None:
    lock = DistributionLock(lock_path)
    assert lock.check() is None  # no file yet: nobody can hold it
    lock.prepare()
    assert lock_path.exists()
    assert lock.check() is None


def test_lock_probe_is_busy_while_hold_runs_and_names_the_holder(
    lock_path: Path, held_by_hold: subprocess.Popen[bytes]
) -> None:
    lock = DistributionLock(lock_path)
    detail = lock.check()
    assert detail is not None
    assert str(lock_path) in detail and f"pid {held_by_hold.pid}" in detail and "hold" in detail
    held_by_hold.terminate()
    held_by_hold.wait(timeout=10)
    assert lock.check() is None


def test_while_the_agent_signals_a_distribution_waits_for_the_lock(lock_path: Path) -> None:
    guard = Guard([DistributionLock(lock_path)], DEFAULT_DISRUPTIVE)
    guard.prepare()
    started = lock_path.parent / "started"
    with guard.quiet() as busy:
        assert busy is None
        touch = ["touch", str(started)]
        holder = subprocess.Popen(
            [sys.executable, "-m", "agent", "hold", "--lock", str(lock_path), "--", *touch],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        said: list[str] = []
        reader = threading.Thread(target=_collect, args=(holder.stderr, said))
        reader.start()
        # However long its start takes on a loaded machine: it says it waits, and does.
        wait_for(lambda: said or holder.poll() is not None, 60, "hold to say it waits")
        assert "the agent is signalling" in "".join(said)
        assert holder.poll() is None and not started.exists()  # it waits: no overlap
    assert holder.wait(timeout=30) == 0 and started.exists()
    reader.join(timeout=10)
    if holder.stderr is not None:
        holder.stderr.close()


def _collect(stream: IO[str] | None, lines: list[str]) -> None:
    assert stream is not None
    for line in stream:
        lines.append(line)


def test_a_lock_held_shared_in_this_process_makes_quiet_busy(lock_path: Path) -> None:
    lock = DistributionLock(lock_path)
    guard = Guard([lock], DEFAULT_DISRUPTIVE)
    fd = lock.hold_shared()
    try:
        with guard.quiet() as busy:
            assert busy is not None and busy.probe == "lock"
        assert guard.lock_busy() is not None
    finally:
        os.close(fd)
    assert guard.lock_busy() is None


def test_quiet_really_holds_the_lock_exclusively(lock_path: Path) -> None:
    guard = Guard([DistributionLock(lock_path)], DEFAULT_DISRUPTIVE)
    guard.prepare()
    with guard.quiet() as busy:
        assert busy is None
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)


# -- process, marker, command -------------------------------------------------------------


@pytest.mark.parametrize("length", [8, 24], ids=["short-name", "name-longer-than-comm"])
def test_process_probe_sees_a_named_process(tmp_path: Path, length: int) -> None:
    name = ("inst" + uuid.uuid4().hex)[:length]
    program = tmp_path / name
    shutil.copy("/bin/sleep", program)
    probe = ProcessProbe([name.upper(), "no-such-installer"])  # names match in any case
    assert probe.check() is None
    running = subprocess.Popen([str(program), "30"])
    try:
        time.sleep(0.1)
        detail = probe.check()
        assert detail is not None and f"pid {running.pid}" in detail
    finally:
        running.terminate()
        running.wait(timeout=10)
    assert probe.check() is None


def test_process_probe_matches_a_windows_style_argv0(tmp_path: Path) -> None:
    name = "smsapm" + uuid.uuid4().hex[:6]
    shutil.copy("/bin/sleep", tmp_path / "sleep-copy")
    command = f"exec -a 'C:\\SMS\\{name.upper()}.EXE' {tmp_path / 'sleep-copy'} 30"
    running = subprocess.Popen(["bash", "-c", command])
    try:
        time.sleep(0.2)
        assert ProcessProbe([name]).check() is not None
    finally:
        running.terminate()
        running.wait(timeout=10)


def test_marker_probe(tmp_path: Path) -> None:
    probe = MarkerProbe([str(tmp_path / "*.inprogress"), str(tmp_path / "never")])
    assert probe.check() is None
    (tmp_path / "office.inprogress").touch()
    assert probe.check() == f"{tmp_path / 'office.inprogress'} exists"
    (tmp_path / "office.inprogress").unlink()
    assert probe.check() is None


def test_command_probe_busy_on_the_configured_statuses(tmp_path: Path) -> None:
    flag = tmp_path / "busy"
    probe = CommandProbe(["test", "-e", str(flag)], busy_codes=[0], timeout=5)
    assert probe.check() is None
    flag.touch()
    assert probe.check() == "test exited 0"
    inverted = CommandProbe(["test", "-e", str(flag)], busy_codes=[1], timeout=5)
    assert inverted.check() is None
    flag.unlink()
    assert inverted.check() == "test exited 1"


def test_a_command_probe_that_cannot_answer_counts_as_busy(tmp_path: Path) -> None:
    missing = CommandProbe([str(tmp_path / "absent")], busy_codes=[0], timeout=5)
    assert "cannot run" in (missing.check() or "")
    slow = CommandProbe(["sleep", "5"], busy_codes=[0], timeout=0.2)
    assert "ran over" in (slow.check() or "")


def test_any_busy_probe_makes_the_guard_busy(tmp_path: Path) -> None:
    marker = MarkerProbe([str(tmp_path / "*.busy")])
    command = CommandProbe(["false"], busy_codes=[0], timeout=5)
    guard = Guard([DistributionLock(tmp_path / "lock"), marker, command], DEFAULT_DISRUPTIVE)
    with guard.quiet() as busy:
        assert busy is None
    (tmp_path / "x.busy").touch()
    with guard.quiet() as busy:
        assert busy is not None and str(busy).startswith("marker: ")
    assert [p.name for p, detail in guard.survey() if detail] == ["marker"]


# -- policy and configuration -------------------------------------------------------------


def test_default_policy_is_the_kb_list() -> None:
    guard = Guard.from_config(GuardConfig())
    assert [p.name for p in guard.probes] == ["lock", "process"]
    for event in DEFAULT_DISRUPTIVE:
        assert guard.disruptive(event)
    for event in ("CQMGR32_STARTCYCLE", "SMSAPM32_STARTCYCLE", "CLISVCL_STARTCYCLE"):
        assert not guard.disruptive(event)
    assert not Guard([], DEFAULT_DISRUPTIVE).disruptive("CCIM32_STARTCYCLE")  # no probes


def test_guard_table_is_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'client_id = "PC042"\n[agent]\njournal = "/var/lib/setevnt/journal"\n[guard]\n'
        'probes = ["marker", "command"]\nmarkers = ["/tmp/*.busy"]\ncommand = ["probe"]\n'
        "busy_exit_codes = [3, 4]\npoll_interval = 0.5\nmax_deferral = 600\n"
        'disruptive = ["CQMGR32_STARTCYCLE"]\n'
    )
    guard = load(path, environ={}).guard
    assert guard.probes == ("marker", "command")
    assert guard.busy_exit_codes == (3, 4)
    assert (guard.poll_interval, guard.max_deferral) == (0.5, 600.0)
    assert guard.disruptive == ("CQMGR32_STARTCYCLE",)
    assert guard.spool == "/var/lib/setevnt/journal.spool"  # beside the journal
    assert load(None, environ={"SETEVNT_CLIENT_ID": "PC042"}).guard == GuardConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('probes = ["lock", "psychic"]', "guard.probes"),
        ('probes = ["marker"]', "guard.markers"),
        ('probes = ["command"]', "guard.command"),
        ("poll_interval = 0", "poll_interval"),
        ('disruptive = ["CCIM32_STARTCYLE"]', "CCIM32_STARTCYLE"),
        ('probe = ["lock"]', "guard.probe: unknown key; did you mean probes?"),
        ('processes = "dpkg"', "guard.processes: must be an array, not a string"),
    ],
)
def test_bad_guard_settings_are_config_errors(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'client_id = "PC042"\n[guard]\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        load(path, environ={})


def test_the_default_policy_tolerates_a_redefined_component(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'client_id = "PC042"\n[[components]]\nname = "CCIM32"\nevents = ["STARTCYCLE"]\n'
    )
    assert load(path, environ={}).guard.disruptive == DEFAULT_DISRUPTIVE  # CCIM32_CLOSE is gone
    path.write_text(path.read_text() + '[guard]\ndisruptive = ["CCIM32_CLOSE"]\n')
    with pytest.raises(ConfigError, match="CCIM32_CLOSE"):
        load(path, environ={})


def test_example_guard_section_loads_with_its_comments_uncommented(tmp_path: Path) -> None:
    # It shows the defaults (the spool beside the example's journal).
    assert load(EXAMPLE, environ={}).guard == GuardConfig(spool="/var/lib/setevnt/journal.spool")
    text = EXAMPLE.read_text()
    section = text[text.index("\n[guard]") : text.index("\n[versions]")]
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line
        for line in section.splitlines()
    )
    path = tmp_path / "agent.toml"
    path.write_text(text.replace(section, uncommented))
    guard = load(path, environ={}).guard
    assert guard.markers and guard.command and guard.spool


def test_the_lock_is_only_for_the_agent_user_and_root(tmp_path: Path) -> None:
    lock = DistributionLock(tmp_path / "run" / "setevnt" / "distribution.lock")
    lock.prepare()
    assert stat.S_IMODE(lock.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    older = tmp_path / "older.lock"  # as an earlier release created it
    older.write_text("")
    older.chmod(0o644)
    DistributionLock(older).prepare()
    assert stat.S_IMODE(older.stat().st_mode) == 0o600


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv, to run hold without root's right to open any file",
)
def test_hold_that_cannot_open_the_lock_says_who_can(tmp_path: Path) -> None:
    """The lock belongs to another user here, and hold runs without root's override."""
    lock = tmp_path / "run" / "setevnt" / "distribution.lock"
    DistributionLock(lock).prepare()
    for path in (lock, lock.parent):
        os.chown(path, 65534, 65534)
    unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    shown = subprocess.run(
        [*unprivileged, sys.executable, "-m", "agent", "hold", "--lock", str(lock), "--", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 125, shown.stderr
    (line,) = shown.stderr.splitlines()
    assert "Permission denied" in line
    assert "only the agent's user or root may take the distribution lock" in line


# -- the CLI ------------------------------------------------------------------------------


def test_hold_returns_the_status_of_its_command(lock_path: Path) -> None:
    assert agent_cli("hold", "--lock", str(lock_path), "--", "sh", "-c", "exit 7").returncode == 7
    shown = agent_cli("hold", "--lock", str(lock_path), "--", str(lock_path.parent / "nope"))
    assert shown.returncode == 127 and "not found" in shown.stderr
    assert agent_cli("hold", "--lock", str(lock_path)).returncode == 2
    config = lock_path.parent.parent / "agent.toml"  # no client id: hold does not need one
    config.write_text(f'[guard]\nlock = "{lock_path}"\n')
    assert agent_cli("hold", "--config", str(config), "--", "true").returncode == 0
    assert lock_path.exists()


def test_hold_stopped_while_starting_its_command_stops_the_command_too(lock_path: Path) -> None:
    """A SIGTERM that lands while CMD is being started reaches CMD, and the lock is freed.

    The signal is sent from inside Popen, the moment hold used to die alone and leave CMD
    running with the lock.
    """
    script = (
        "import os, signal, subprocess, sys\n"
        "from agent import guard_cli\n"
        "real = subprocess.Popen\n"
        "def popen(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*args, **kwargs)\n"
        "subprocess.Popen = popen\n"
        f"sys.exit(guard_cli.hold({str(lock_path)!r}, None, ['--', 'sleep', '30']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=20, check=False)
    assert done.returncode == 128 + signal.SIGTERM  # CMD's status: ended by the signal
    assert DistributionLock(lock_path).check() is None


def test_check_shows_each_probe_and_the_events_that_would_wait(
    tmp_path: Path, lock_path: Path, held_by_hold: subprocess.Popen[bytes]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'client_id = "PC042"\n[guard]\nprobes = ["lock", "marker"]\nlock = "{lock_path}"\n'
        f'markers = ["{tmp_path}/*.inprogress"]\n'
        # What `run` needs, which check refuses without: a backend, a journal, a decision.
        f'[agent]\njournal = "{tmp_path / "journal"}"\n[security]\nallow_unsigned = true\n'
        '[backend]\ntype = "exec"\n[backend.exec.commands]\n'
    )
    shown = agent_cli("check", "--config", str(config))
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.split()[0] == "lock" and "BUSY" in line for line in lines[1:3])
    assert any(line.split()[0] == "marker" and line.endswith("free") for line in lines[1:3])
    assert "now: busy - these would be deferred: CCIM32_CLOSE, CCIM32_STARTCYCLE" in shown.stdout
    assert "CQMGR32_STARTCYCLE" in next(line for line in lines if line.startswith("never wait"))

    held_by_hold.terminate()
    held_by_hold.wait(timeout=10)
    shown = agent_cli("check", "--config", str(config))
    assert shown.returncode == 0
    assert "now: free" in shown.stdout
