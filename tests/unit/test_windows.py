"""What the agent does for Windows that Linux can check: the lock library on both lockers,
the process probe's name matching, the default paths, the ACL, hold's exit status, the
exec backend's process-tree kill, and the service's start/stop mapping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent import files, guard, guard_cli, service_cli
from agent.backends.exec import ExecBackend, finished
from agent.config import DEFAULT_DISRUPTIVE, ConfigError
from agent.guard import DistributionLock, Guard, ProcessProbe
from agent.guard_cli import exit_status
from agent.locking import FlockLocker, Locker, PortaLocker, default_locker
from agent.windows import acl
from agent.windows.paths import POSIX_LOCK, defaults
from agent.windows.runner import EXIT_CONFIG, EXIT_OK, ServiceRunner
from schemas.messages import Command

LOCKERS = [FlockLocker, PortaLocker]


@pytest.fixture
def lock_file(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Two descriptors of one lock file: two holders, as two processes would be."""
    path = tmp_path / "distribution.lock"
    first = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    second = os.open(path, os.O_RDONLY)
    yield first, second
    os.close(first)
    os.close(second)


# -- the lock library ---------------------------------------------------------------------


@pytest.mark.parametrize("agent_side", LOCKERS, ids=lambda c: c.name)
@pytest.mark.parametrize("hold_side", LOCKERS, ids=lambda c: c.name)
def test_shared_holds_keep_the_exclusive_check_out_and_release_lets_it_in(
    lock_file: tuple[int, int], agent_side: type[Locker], hold_side: type[Locker]
) -> None:
    held, checked = lock_file
    distribution, agent = hold_side(), agent_side()
    assert distribution.try_lock(held, shared=True)
    assert not agent.try_lock(checked, shared=False)
    assert agent.try_lock(checked, shared=True)  # shared holds do not exclude each other
    agent.unlock(checked)
    distribution.unlock(held)
    assert agent.try_lock(checked, shared=False)
    assert not distribution.try_lock(held, shared=True)  # the agent signals: hold waits
    agent.unlock(checked)


@pytest.mark.parametrize("locker", LOCKERS, ids=lambda c: c.name)
def test_a_blocking_shared_lock_waits_for_the_exclusive_holder(
    lock_file: tuple[int, int], locker: type[Locker]
) -> None:
    held, waiting = lock_file
    agent, distribution = locker(), locker()
    assert agent.try_lock(held, shared=False)
    taken = threading.Event()

    def hold() -> None:
        distribution.lock(waiting, shared=True)
        taken.set()

    thread = threading.Thread(target=hold)
    thread.start()
    assert not taken.wait(0.3)
    released = time.monotonic()
    agent.unlock(held)
    assert taken.wait(5)
    thread.join()
    assert time.monotonic() - released < 1.0
    distribution.unlock(waiting)


def test_the_guard_runs_on_portalocker_as_on_windows(tmp_path: Path) -> None:
    lock = DistributionLock(tmp_path / "run" / "distribution.lock", PortaLocker())
    guard = Guard([lock], DEFAULT_DISRUPTIVE)
    guard.prepare()
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    fd = DistributionLock(lock.path, FlockLocker()).hold_shared()
    try:
        with guard.quiet() as busy:
            assert busy is not None and busy.probe == "lock"
    finally:
        os.close(fd)
    with guard.quiet() as busy:
        assert busy is None


def test_linux_uses_flock_itself() -> None:
    assert isinstance(default_locker(), FlockLocker)


def test_the_agent_does_not_import_portalocker_on_linux() -> None:
    probe = "import sys, agent.cli, agent.guard; print('portalocker' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_hold_as_on_windows_keeps_the_lock_itself_and_returns_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows' path through hold: portalocker, no descriptor passed to the installer."""
    monkeypatch.setattr(guard_cli, "WINDOWS", True)
    monkeypatch.setattr(guard, "default_locker", PortaLocker)
    lock_path = tmp_path / "run" / "distribution.lock"
    observer = DistributionLock(lock_path, FlockLocker())
    seen: list[str | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(observer.check())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = guard_cli.hold(str(lock_path), None, ["--", "sh", "-c", "sleep 0.8; exit 3"])
    finally:
        done.set()
        watcher.join(5)
    assert status == 3
    assert any(s is not None for s in seen)  # held while the installer ran
    assert observer.check() is None  # and released when it ended


# -- the process probe --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cmdline", "found"),
    [
        ("msiexec.exe", [r"C:\Windows\System32\msiexec.exe", "/i", "app.msi"], "msiexec"),
        ("MSIEXEC.EXE", None, "msiexec"),  # another user's process: no command line
        ("python.exe", [r"C:\SMS\SMSAPM32.EXE"], "smsapm32"),
        ("explorer.exe", [r"C:\Windows\explorer.exe"], None),
        (None, None, None),  # access denied to both
    ],
)
def test_the_process_probe_matches_windows_names(
    name: str | None, cmdline: list[str] | None, found: str | None
) -> None:
    assert ProcessProbe(["SMSAPM32", "msiexec.exe"]).match(name, cmdline) == found


# -- paths, ACLs --------------------------------------------------------------------------


def test_windows_defaults_live_under_program_data() -> None:
    found = defaults("nt", {"PROGRAMDATA": r"D:\Data"})
    assert found.config == r"D:\Data\setevnt\agent.toml"
    assert found.journal == r"D:\Data\setevnt\journal"
    assert found.lock == r"D:\Data\setevnt\distribution.lock"
    assert defaults("nt", {}).config == r"C:\ProgramData\setevnt\agent.toml"
    posix = defaults("posix", {"PROGRAMDATA": r"D:\Data"})
    assert (posix.config, posix.journal, posix.lock) == (None, None, POSIX_LOCK)


def test_the_acl_grants_system_and_administrators_only() -> None:
    argv = acl.restrict_argv(r"C:\ProgramData\setevnt\spool", {"SystemRoot": r"C:\WINDOWS"})
    assert argv == [
        r"C:\WINDOWS\System32\icacls.exe",
        r"C:\ProgramData\setevnt\spool",
        "/inheritance:r",
        "/grant:r",
        "*S-1-5-18:(OI)(CI)F",
        "*S-1-5-32-544:(OI)(CI)F",
    ]


def test_a_directory_created_on_windows_gets_the_acl_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restricted: list[Path] = []
    monkeypatch.setattr(acl, "restrict", restricted.append)
    files.create_private(tmp_path / "spool", windows=True)
    files.create_private(tmp_path / "spool", windows=True)  # exists: left as it is
    assert restricted == [tmp_path / "spool"]
    files.create_private(tmp_path / "posix")
    assert restricted == [tmp_path / "spool"]
    assert (tmp_path / "posix").stat().st_mode & 0o777 == 0o700


# -- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "windows", "status"),
    [
        (0, True, 0),
        (1603, True, 1603),  # msiexec: fatal error during installation
        (3221225477, True, -1073741819),  # 0xC0000005 as Windows' Python reports it
        (-9, False, 137),
        (3, False, 3),
    ],
)
def test_hold_exits_with_the_installer_status(returncode: int, windows: bool, status: int) -> None:
    assert exit_status(returncode, windows=windows) == status


def test_an_ntstatus_exit_becomes_a_signed_int32_with_its_hex() -> None:
    result = finished("ccim32.exe", 3221225477, b"crashed\n")
    assert result.exit_code == -1073741819
    assert result.detail == "exec: ccim32.exe exited with status -1073741819 (0xC0000005)"


def test_a_timed_out_program_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; echo started; wait"
    backend = ExecBackend({"CCIM32_STARTCYCLE": ["bash", "-c", script]}, timeout=1.0)
    now = time.time()
    command = Command(
        command_id="cmd-1",
        client_id="PC042",
        component="CCIM32",
        event="STARTCYCLE",
        silent=True,
        issued_at=now,
        expires_at=now + 60,
        requested_by="tests",
    )
    began = time.monotonic()
    result = backend.signal(command)
    assert result.timed_out and "ran over 1 s" in (result.detail or "")
    assert result.output is not None and "started" in result.output
    assert time.monotonic() - began < 10  # not waiting for the grandchild's pipe
    grandchild = int(pids.read_text())
    assert not psutil.pid_exists(grandchild) or (
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    )


# -- the service --------------------------------------------------------------------------


class FakeDaemon:
    """Runs until stopped, like Agent.run (the broker-backed test uses the real Agent)."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        self.running.set()
        self.stopped.wait(10)

    def stop(self) -> None:
        self.stopped.set()


def test_service_stop_is_the_daemons_graceful_stop() -> None:
    daemon = FakeDaemon()
    runner = ServiceRunner(lambda: daemon)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(runner.run()))
    thread.start()
    assert daemon.running.wait(5)
    runner.stop()
    thread.join(5)
    assert status == [EXIT_OK] and daemon.stopped.is_set()


def test_a_stop_before_the_agent_is_built_means_it_never_runs() -> None:
    daemon = FakeDaemon()
    runner = ServiceRunner(lambda: daemon)
    runner.stop()
    assert runner.run() == EXIT_OK and not daemon.running.is_set()


def test_a_config_the_agent_refuses_stops_the_service_with_status_2() -> None:
    def refuse() -> FakeDaemon:
        raise ConfigError("no client id")

    assert ServiceRunner(refuse).run() == EXIT_CONFIG


def test_service_elsewhere_points_to_the_systemd_unit(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["service", "install"]) == 2
    err = capsys.readouterr().err
    assert "Windows-only" in err and "deploy/systemd/setevnt-agent.service" in err
    assert service_cli.SYSTEMD_HINT in err
    assert (Path(__file__).resolve().parents[2] / "deploy/systemd/setevnt-agent.service").exists()
