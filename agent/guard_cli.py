"""``setevnt-agent hold`` and ``setevnt-agent check``: the guard, for client administrators.

hold [--lock PATH | --config FILE] -- CMD ARGS...
    Run CMD holding the distribution lock shared and exit with CMD's status, so an
    existing installer is protected without changing it. On POSIX CMD inherits the lock,
    so it stays held while CMD runs even if ``hold`` itself is killed; on Windows a lock
    belongs to the process that took it, so ``hold`` keeps it while it waits for CMD (and
    a killed ``hold`` releases it). Only the agent's user and root may take the lock (it
    is 0600 in a 0700 directory; on Windows: SYSTEM and Administrators). Exit 125: the
    lock could not be taken; 126: CMD cannot be run; 127: CMD not found (as ``env`` and
    ``timeout``); CMD's status otherwise (on Windows the signed 32-bit value it reports).
check [--config FILE] [--json] [--client ID] [--url URL] [--backend KIND] [--journal PATH]
    Refuse, in the same one line and with exit 2, whatever ``run`` would refuse to start
    with (agent.preflight); otherwise show those start-up checks, what each probe sees now
    and which events would be deferred. Exit 0 when nothing is busy, 1 when a probe says
    busy. ``--json`` prints the same as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent import preflight
from agent.backends.base import int32_exit_code
from agent.config import DEFAULT_LOCK, AgentConfig, ConfigError, default_path, load
from agent.guard import DistributionLock, Guard, GuardConfigError, Probe
from agent.spool import SUFFIX

COMMANDS = ("hold", "check")
WINDOWS = os.name == "nt"
# POSIX: passed on to CMD. Windows: a console's Ctrl+C or Ctrl+Break reaches CMD itself,
# so hold only ignores them and keeps the lock until CMD exits.
FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")
    if hasattr(signal, name)
)


def add_commands(sub: Any, config_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the subcommands to ``setevnt-agent``'s argparse subparsers.

    ``config_options`` adds run's --config, --client, --url, --backend and --journal.
    """
    hold = sub.add_parser("hold", help="run an installer holding the distribution lock")
    where = hold.add_mutually_exclusive_group()
    where.add_argument("--lock", help=f"lock file (default: the config's, else {DEFAULT_LOCK})")
    where.add_argument("--config", help="agent TOML file whose [guard] lock to take")
    hold.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the installer to run"
    )
    check = sub.add_parser(
        "check", help="refuse what run would refuse; show what the guard sees now"
    )
    config_options(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    if args.command == "hold":
        return hold(args.lock, args.config, args.argv)
    return check(default_path(args.config), overrides, as_json=args.json)


# -- hold ---------------------------------------------------------------------------------


def hold(lock_path: str | None, config_path: str | None, argv: Sequence[str]) -> int:
    argv = list(argv[1:] if argv[:1] == ["--"] else argv)
    if not argv:
        return _fail("hold: no command given (usage: setevnt-agent hold -- CMD ARGS...)", 2)
    try:
        # The client id does not matter here, and installers may not have it set.
        config = load(config_path, overrides={"client_id": "hold"}) if config_path else None
        path = lock_path or (config.guard.lock if config else DEFAULT_LOCK)
    except ConfigError as exc:
        return _fail(f"hold: {exc}", 2)
    try:
        lock = DistributionLock(path)
        fd = lock.hold_shared(on_wait=lambda: _say(f"waiting for {path}: the agent is signalling"))
    except GuardConfigError as exc:
        return _fail(f"hold: {exc}", 125)
    except PermissionError as exc:
        return _fail(
            f"hold: cannot lock {path}: {exc.strerror} (only the agent's user or root may "
            "take the distribution lock: run hold as one of them)",
            125,
        )
    except OSError as exc:
        return _fail(f"hold: cannot lock {path}: {exc.strerror}", 125)
    try:
        return _run_holding(argv, fd)
    finally:
        lock.release(fd)


def _run_holding(argv: list[str], fd: int) -> int:
    # Forwarding is in place before CMD starts: a signal in between would otherwise end
    # hold alone and leave CMD running with the lock, deaf to the signal sent to stop it.
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            early.append(signum)
        elif not WINDOWS:  # Windows' send_signal knows only terminate and console events
            child.send_signal(signum)  # the installer decides; the lock stays until it exits

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        if early:  # asked to stop before CMD started: do not start it
            return 128 + early[0]
        try:
            # A Windows lock stays with this process, which waits for CMD below.
            child = subprocess.Popen(argv, pass_fds=() if WINDOWS else (fd,))
        except FileNotFoundError:
            return _fail(f"hold: {argv[0]}: command not found", 127)
        except OSError as exc:
            return _fail(f"hold: {argv[0]}: {exc.strerror}", 126)
        for signum in early:  # arrived while CMD was being started
            forward(signum, None)
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_status(status, windows=WINDOWS)


def exit_status(returncode: int, *, windows: bool) -> int:
    """hold's own exit status for CMD's: the shell's 128+N for a signal on POSIX; on
    Windows the signed 32-bit value (0xC0000005 is -1073741819), which exit() hands back
    as the same 32 bits."""
    if windows:
        code = int32_exit_code(returncode)
        return 1 if code is None else code
    return returncode if returncode >= 0 else 128 - returncode


# -- check --------------------------------------------------------------------------------


def check(config_path: str | None, overrides: dict[str, str], *, as_json: bool = False) -> int:
    try:
        config = load(config_path, overrides=overrides)
        found = preflight.findings(config)
        refused = next((f.detail for f in found if not f.ok), None)
        if refused is not None:
            raise ConfigError(refused)
        guard = Guard.from_config(config.guard)
    except (ConfigError, GuardConfigError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "config": config_path, "error": str(exc)}))
        return _fail(str(exc), 2, prefix="setevnt-agent: ")
    survey = guard.survey()
    busy = any(detail is not None for _, detail in survey)
    if as_json:
        print(json.dumps(_report(config, found, guard, survey), indent=2))
        return 1 if busy else 0
    settings = config.guard
    print(
        f"guard of {config.client_id}: probes {', '.join(settings.probes) or 'none'}; "
        f"polls every {settings.poll_interval:g} s; defers at most {settings.max_deferral:g} s"
    )
    for probe, detail in survey:
        print(f"  {probe.name:<8} {probe.describe()}: {'BUSY - ' + detail if detail else 'free'}")
    _print_policy(config, guard, busy)
    _print_spool(settings.spool)
    print("start-up checks (what `run` checks first): all passed")
    for finding in found:
        warning = f" - WARNING: {finding.warning}" if finding.warning else ""
        print(f"  {finding.check:<8} {finding.detail}{warning}")
    return 1 if busy else 0


def _report(
    config: AgentConfig,
    found: list[preflight.Finding],
    guard: Guard,
    survey: list[tuple[Probe, str | None]],
) -> dict[str, Any]:
    events = config.catalog.event_names()
    return {
        "ok": True,
        "config": config.source,
        "client_id": config.client_id,
        "backend": config.backend,
        "checks": [f.as_json() for f in found],
        "probes": [
            {"probe": p.name, "what": p.describe(), "busy": d is not None, "detail": d}
            for p, d in survey
        ],
        "busy": any(d is not None for _, d in survey),
        "wait_for_distributions": [e for e in events if guard.disruptive(e)],
        "never_wait": [e for e in events if not guard.disruptive(e)],
        "spool": config.guard.spool,
        "allow_force": config.allow_force,
    }


def _print_policy(config: AgentConfig, guard: Guard, busy: bool) -> None:
    events = config.catalog.event_names()
    waiting = [e for e in events if guard.disruptive(e)]
    print(f"wait for distributions: {', '.join(waiting) or 'none'}")
    print(f"never wait: {', '.join(e for e in events if e not in waiting) or 'none'}")
    if busy and waiting:
        print(f"now: busy - these would be deferred: {', '.join(waiting)}")
    else:
        print("now: free - every event would run at once")
    if config.allow_force:
        print("forced commands (setevnt --force) bypass the guard here (agent.allow_force)")


def _print_spool(directory: str | None) -> None:
    if directory is None:
        print("spool: none (deferred commands are kept in memory only)")
        return
    try:
        count = sum(1 for p in Path(directory).iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        count = 0
    except OSError as exc:  # a spool only the agent's user may read
        print(f"spool: {directory}: {exc.strerror}")
        return
    print(f"spool: {directory}: {count} command(s) waiting (deferred or scheduled)")


def _say(text: str, prefix: str = "setevnt-agent ") -> None:
    print(f"{prefix}{text}", file=sys.stderr, flush=True)


def _fail(text: str, status: int, prefix: str = "setevnt-agent ") -> int:
    _say(text, prefix)
    return status
