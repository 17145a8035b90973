"""Is a software distribution running? Probes that say so, combined into one guard.

The KB article Q283130 case: a CCIM verify cycle started while SMSAPM32 installs an
advertised program stops the install abruptly, with no error. So before a disruptive
event the agent asks the guard, and any probe that reports busy makes it wait.

Probes:
  ``lock``    an advisory lock file that distributions hold shared (``setevnt-agent
              hold -- CMD``). The agent takes it exclusively, without blocking, and keeps it
              while it signals: a distribution cannot start between check and signal.
              ``flock`` on POSIX, ``LockFileEx`` on Windows (agent.locking).
  ``process`` named processes running (psutil: /proc on Linux, the process list on Windows).
  ``marker``  files matching globs exist.
  ``command`` a probe program's exit status says busy.
Only the lock is race-free; the others are snapshots, taken while the lock is held.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from agent.config import GuardConfig
from agent.files import create_private
from agent.locking import Locker, default_locker

log = logging.getLogger(__name__)

PROC = Path("/proc")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class GuardConfigError(ValueError):
    """A probe cannot work on this machine as configured (raised at start-up)."""


@dataclass(frozen=True, slots=True)
class Busy:
    """Why a probe says a distribution is running; ``str()`` goes into acks and logs."""

    probe: str
    detail: str

    def __str__(self) -> str:
        return f"{self.probe}: {self.detail}"


class Probe(Protocol):
    name: str

    def describe(self) -> str: ...

    def check(self) -> str | None:
        """None when free, else what makes it busy."""
        ...


class DistributionLock:
    """The advisory lock: distributions hold it shared, the agent takes it exclusively."""

    name = "lock"

    def __init__(self, path: str | Path, locker: Locker | None = None) -> None:
        self.path = Path(path)
        self._locker = default_locker() if locker is None else locker
        # flock conflicts between two descriptors of one process too: without this, the
        # watcher's quick look could make the worker's signal attempt see "busy".
        self._mutex = threading.Lock()

    def describe(self) -> str:
        return str(self.path)

    def prepare(self) -> None:
        """Create the lock file, so that a lock taken before a signal means something.

        Only the agent's user (and root) may open it: a user who could take it shared
        could hold every disruptive event back for ever. So it is created 0600 in a
        directory created 0700 (on Windows: for SYSTEM and Administrators only), and an
        existing file of ours with a looser mode is fixed.
        """
        try:
            create_private(self.path.parent)
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning(
                "lock %s cannot be created (%s): until a distribution creates it, signals "
                "are not protected against one starting at the same moment",
                self.path,
                exc.strerror,
            )
            return
        try:
            _private(fd, self.path)
        finally:
            os.close(fd)

    def check(self) -> str | None:
        with self.exclusive() as held:
            return None if held else self.holders()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Hold the lock exclusively for the block if nobody holds it; yield whether held."""
        with self._mutex:
            try:
                fd = self._open()
            except OSError as exc:  # cannot tell (no access, a link in its place): do not interrupt
                log.warning("lock %s: %s; counted as held", self.path, exc.strerror)
                yield False
                return
            if fd is None:  # no file, so no distribution can hold it
                yield True
                return
            try:
                held = self._locker.try_lock(fd, shared=False)
                try:
                    yield held
                finally:
                    if held:
                        self._locker.unlock(fd)
            finally:
                os.close(fd)

    def hold_shared(self, on_wait: Callable[[], None] | None = None) -> int:
        """Take the lock shared, waiting while the agent signals; return the descriptor.

        Closing the descriptor (or the holding process ending) releases the lock.
        """
        create_private(self.path.parent)
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | NOFOLLOW, 0o600)
        try:
            if not self._locker.try_lock(fd, shared=True):
                if on_wait is not None:
                    on_wait()
                self._locker.lock(fd, shared=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self, fd: int) -> None:
        """Let go of a lock hold_shared took.

        POSIX: only close, as unlocking would also free it for any process the command left
        behind with the inherited descriptor. Windows: unlock first, as the system may
        release a closed handle's lock only some time later.
        """
        try:
            if sys.platform == "win32":
                self._locker.unlock(fd)
        finally:
            os.close(fd)

    def holders(self) -> str:
        """Who holds the lock, from /proc/locks where there is one (best effort)."""
        pids = lock_holders(self.path)
        who = ", ".join(f"pid {pid} ({_cmdline(pid) or '?'})" for pid in pids[:3])
        return f"{self.path} is held by a distribution" + (f": {who}" if who else "")

    def _open(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CREAT | NOFOLLOW, 0o600)
        except (FileNotFoundError, PermissionError):
            pass  # we may not create it here, but a distribution may have
        try:
            return os.open(self.path, os.O_RDONLY | NOFOLLOW)
        except FileNotFoundError:
            return None


class ProcessProbe:
    """Busy while a process of a configured name runs (its name or argv[0], any case).

    Names match without ``.exe``: ``msiexec`` is msiexec.exe on Windows.
    """

    name = "process"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._wanted = {n.lower().removesuffix(".exe") for n in names}

    def describe(self) -> str:
        return ", ".join(self.names)

    def check(self) -> str | None:
        found = list(self.running())
        if not found:
            return None
        shown = ", ".join(f"{name} (pid {pid})" for pid, name in found[:3])
        return f"running: {shown}"

    def running(self) -> Iterator[tuple[int, str]]:
        me = os.getpid()
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.pid == me:
                continue
            name = self.match(process.info["name"], process.info["cmdline"])
            if name is not None:
                yield process.pid, name

    def match(self, name: str | None, cmdline: Sequence[str] | None) -> str | None:
        """The configured name this process answers to, if any (None: unknown or not ours)."""
        argv0 = cmdline[0] if cmdline else ""
        base = re.split(r"[\\/]", argv0)[-1].lower()
        comm = (name or "").lower()
        names = {comm, comm.removesuffix(".exe"), base, base.removesuffix(".exe")} - {""}
        for wanted in self._wanted:
            # Linux cuts a process name to 15 characters.
            if wanted in names or (len(wanted) > 15 and wanted[:15] == comm):
                return wanted
        return None


class MarkerProbe:
    """Busy while any file matches one of the globs."""

    name = "marker"

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)

    def describe(self) -> str:
        return ", ".join(self.patterns)

    def check(self) -> str | None:
        for pattern in self.patterns:
            found = sorted(glob.glob(pattern))
            if found:
                return f"{found[0]} exists"
        return None


class CommandProbe:
    """Busy when a probe program exits with one of the busy statuses.

    A probe that cannot run or runs too long counts as busy: when in doubt, do not
    interrupt (the deferral ends at the latest at max_deferral, with an ``expired`` ack).
    """

    name = "command"

    def __init__(self, argv: Sequence[str], busy_codes: Iterable[int], timeout: float) -> None:
        self.argv = list(argv)
        self.busy_codes = frozenset(busy_codes)
        self.timeout = timeout

    def describe(self) -> str:
        codes = ", ".join(str(c) for c in sorted(self.busy_codes))
        return f"{' '.join(self.argv)} (busy on exit {codes})"

    def check(self) -> str | None:
        try:
            done = subprocess.run(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{self.argv[0]} ran over {self.timeout:g} s (counted as busy)"
        except OSError as exc:
            return f"cannot run {self.argv[0]}: {exc.strerror} (counted as busy)"
        if done.returncode in self.busy_codes:
            return f"{self.argv[0]} exited {done.returncode}"
        return None


class Guard:
    """The probes combined (any busy is busy) and the policy of which events wait."""

    def __init__(
        self,
        probes: Sequence[Probe],
        disruptive: Iterable[str],
        *,
        poll_interval: float = 1.0,
        max_deferral: float = 86400.0,
    ) -> None:
        self.probes = tuple(probes)
        self.lock = next((p for p in probes if isinstance(p, DistributionLock)), None)
        self._others = tuple(p for p in probes if p is not self.lock)
        self.disruptive_events = frozenset(disruptive)
        self.poll_interval = poll_interval
        self.max_deferral = max_deferral

    @classmethod
    def from_config(cls, config: GuardConfig) -> Guard:
        probes: list[Probe] = []
        for name in config.probes:
            if name == "lock":
                probes.append(DistributionLock(config.lock))
            elif name == "process":
                probes.append(ProcessProbe(config.processes))
            elif name == "marker":
                probes.append(MarkerProbe(config.markers))
            else:
                probes.append(
                    CommandProbe(config.command, config.busy_exit_codes, config.command_timeout)
                )
        return cls(
            probes,
            config.disruptive,
            poll_interval=config.poll_interval,
            max_deferral=config.max_deferral,
        )

    def prepare(self) -> None:
        if self.lock is not None:
            self.lock.prepare()

    def disruptive(self, event_name: str) -> bool:
        return bool(self.probes) and event_name in self.disruptive_events

    def survey(self) -> list[tuple[Probe, str | None]]:
        """What every probe sees now (for ``setevnt-agent check``)."""
        return [(probe, probe.check()) for probe in self.probes]

    def lock_busy(self) -> Busy | None:
        if self.lock is None:
            return None
        detail = self.lock.check()
        return Busy(self.lock.name, detail) if detail else None

    def others_busy(self) -> Busy | None:
        """The first non-lock probe that reports busy."""
        for probe in self._others:
            detail = probe.check()
            if detail is not None:
                return Busy(probe.name, detail)
        return None

    @contextlib.contextmanager
    def quiet(self) -> Iterator[Busy | None]:
        """Yield None with the lock held exclusively for the block, or why it is busy."""
        if self.lock is None:
            yield self.others_busy()
            return
        with self.lock.exclusive() as held:
            if not held:
                yield Busy(self.lock.name, self.lock.holders())
            else:
                yield self.others_busy()


def _private(fd: int, path: Path) -> None:
    """Make a lock file of ours 0600 (one an earlier release left 0644, say)."""
    if sys.platform == "win32":  # an ACL decides there (agent.windows.acl), not a mode
        return
    info = os.fstat(fd)
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if not loose or not hasattr(os, "getuid") or info.st_uid != os.getuid():
        return
    try:
        os.fchmod(fd, 0o600)
        log.info("lock %s: mode set to 0600, so that only this agent's user can take it", path)
    except OSError as exc:
        log.warning("lock %s: cannot make it 0600 (%s)", path, exc.strerror)


def lock_holders(path: Path) -> list[int]:
    """Pids holding an flock on ``path`` (from /proc/locks; empty when unknown)."""
    if sys.platform == "win32":  # no lock table to read
        return []
    try:
        stat = path.stat()
        lines = (PROC / "locks").read_text().splitlines()
    except OSError:
        return []
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ 4242 08:01:1234 0 EOF"; waiters have "->" after "1:".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
            pids.append(int(fields[4]))
    return sorted(set(pids))


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()[:80]
    except psutil.Error:  # gone meanwhile, or not ours to read
        return ""
