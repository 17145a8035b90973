"""``setevnt-agent hold`` and ``setevnt-agent check``: the guard, for client administrators.

hold [--lock PATH | --config FILE] -- CMD ARGS...
    Run CMD holding the distribution lock shared and exit with CMD's status, so an
    existing installer is protected without changing it. CMD inherits the lock, so it
    stays held while CMD runs even if ``hold`` itself is killed. Only the agent's user
    and root may take the lock (it is 0600 in a 0700 directory). Exit 125: the lock could
    not be taken; 126: CMD cannot be run; 127: CMD not found (as ``env`` and ``timeout``).
check [--config FILE]
    Show what each probe sees now and which events would be deferred. Exit 0 when nothing
    is busy, 1 when a probe says busy, 2 when the configuration is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent.config import DEFAULT_LOCK, AgentConfig, ConfigError, load
from agent.guard import DistributionLock, Guard, GuardConfigError
from agent.spool import SUFFIX

COMMANDS = ("hold", "check")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def add_commands(sub: Any) -> None:
    """Add the subcommands to ``setevnt-agent``'s argparse subparsers."""
    hold = sub.add_parser("hold", help="run an installer holding the distribution lock")
    where = hold.add_mutually_exclusive_group()
    where.add_argument("--lock", help=f"lock file (default: the config's, else {DEFAULT_LOCK})")
    where.add_argument("--config", help="agent TOML file whose [guard] lock to take")
    hold.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the installer to run"
    )
    check = sub.add_parser("check", help="show what the guard sees now")
    check.add_argument("--config", help="agent TOML file (see deploy/agent.example.toml)")
    check.add_argument("--json", action="store_true", help="print what the guard sees as JSON")


def main(args: argparse.Namespace) -> int:
    if args.command == "hold":
        return hold(args.lock, args.config, args.argv)
    return check(args.config, as_json=args.json)


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
        os.close(fd)


def _run_holding(argv: list[str], fd: int) -> int:
    try:
        child = subprocess.Popen(argv, pass_fds=(fd,))
    except FileNotFoundError:
        return _fail(f"hold: {argv[0]}: command not found", 127)
    except OSError as exc:
        return _fail(f"hold: {argv[0]}: {exc.strerror}", 126)

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)  # the installer decides; the lock stays until it exits

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status if status >= 0 else 128 - status


# -- check --------------------------------------------------------------------------------


def check(config_path: str | None, *, as_json: bool = False) -> int:
    try:
        config = load(config_path)
        guard = Guard.from_config(config.guard)
    except (ConfigError, GuardConfigError) as exc:
        return _fail(f"check: {exc}", 2)
    if as_json:
        return _check_json(config, guard)
    settings = config.guard
    print(
        f"guard of {config.client_id}: probes {', '.join(settings.probes) or 'none'}; "
        f"polls every {settings.poll_interval:g} s; defers at most {settings.max_deferral:g} s"
    )
    busy = False
    for probe, detail in guard.survey():
        busy = busy or detail is not None
        print(f"  {probe.name:<8} {probe.describe()}: {'BUSY - ' + detail if detail else 'free'}")
    _print_policy(config, guard, busy)
    _print_spool(settings.spool)
    return 1 if busy else 0


def _check_json(config: AgentConfig, guard: Guard) -> int:
    probes = [
        {"probe": probe.name, "watches": probe.describe(), "busy": detail}
        for probe, detail in guard.survey()
    ]
    busy = any(p["busy"] is not None for p in probes)
    events = config.catalog.event_names()
    waiting = [e for e in events if guard.disruptive(e)]
    spool = config.guard.spool
    shown = {
        "client_id": config.client_id,
        "probes": probes,
        "busy": busy,
        "wait_for_distributions": waiting,
        "deferred_now": waiting if busy else [],
        "allow_force": config.allow_force,
        "spool": spool,
        "spooled": _spooled(spool) if spool else None,
    }
    print(json.dumps(shown, sort_keys=True))
    return 1 if busy else 0


def _spooled(directory: str) -> int | None:
    try:
        return sum(1 for p in Path(directory).iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return 0
    except OSError:
        return None


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


def _say(text: str) -> None:
    print(f"setevnt-agent {text}", file=sys.stderr, flush=True)


def _fail(text: str, status: int) -> int:
    _say(text)
    return status
