"""What ``setevnt-agent run`` needs before it connects, checked alike by ``check``.

Each check says why the agent would refuse to start, or what it found; none creates or
changes anything on disk, so ``check`` can run beside a live agent. ``run`` calls
:func:`require` and then builds its journal, spool and guard for real, so whatever
``run`` refuses here ``check`` refuses with the same line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.backends import BackendConfigError, make_backend
from agent.config import NO_BACKEND, NO_JOURNAL, NO_SECURITY_DECISION, AgentConfig, ConfigError
from agent.files import UnsafeFile, check_private
from agent.guard import Guard, GuardConfigError

REFUSALS = (ConfigError, BackendConfigError, GuardConfigError, UnsafeFile)


@dataclass(frozen=True)
class Finding:
    check: str  # backend, security, journal, guard
    ok: bool
    detail: str  # what was found, or the one line `run` refuses with
    warning: str | None = None  # worth knowing, not a reason to refuse

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def findings(config: AgentConfig) -> list[Finding]:
    """Every start-up check, in the order ``run`` makes them."""
    return [_finding(name, check, config) for name, check in CHECKS]


def require(config: AgentConfig) -> None:
    """Raise ConfigError with the first reason ``run`` must not start."""
    for finding in findings(config):
        if not finding.ok:
            raise ConfigError(finding.detail)


def _finding(
    name: str, check: Callable[[AgentConfig], tuple[str, str | None]], config: AgentConfig
) -> Finding:
    try:
        detail, warning = check(config)
    except REFUSALS as exc:
        return Finding(name, False, str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return Finding(name, False, f"{where}{exc.strerror or exc}")
    return Finding(name, True, detail, warning)


def backend(config: AgentConfig) -> tuple[str, str | None]:
    if config.backend is None:
        raise ConfigError(NO_BACKEND)
    try:
        make_backend(config.backend, config.backend_options)
    except BackendConfigError as exc:
        problem = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{_where(config)}backend.{config.backend}: {problem}") from None
    if config.backend != "exec":
        return config.backend, None
    commands = dict(config.backend_options.get("commands", {}))
    detail = f"exec: {len(commands)} event(s) mapped to programs"
    if not commands:
        return detail, "[backend.exec.commands] is empty: every command is answered failed"
    missing = sorted({argv[0] for argv in commands.values() if not _runnable(argv[0])})
    return detail, f"not found or not executable here: {', '.join(missing)}" if missing else None


def security(config: AgentConfig) -> tuple[str, str | None]:
    if config.security is None:
        raise ConfigError(NO_SECURITY_DECISION)
    keys = len(config.security.public_keys)
    if config.security.allow_unsigned:
        return (
            f"{keys} dispatcher key(s); unsigned commands obeyed",
            "allow_unsigned is for development only",
        )
    return f"signed commands only ({keys} dispatcher key(s))", None


def journal(config: AgentConfig) -> tuple[str, str | None]:
    if not config.journal:
        raise ConfigError(NO_JOURNAL)
    return _state(Path(config.journal), directory=False), None


def guard(config: AgentConfig) -> tuple[str, str | None]:
    found = Guard.from_config(config.guard)
    probes = ", ".join(p.name for p in found.probes) or "none (the guard is off)"
    spool = config.guard.spool
    if spool is None:
        return f"probes {probes}; no spool", "deferred commands are kept in memory only"
    return f"probes {probes}; spool {_state(Path(spool), directory=True)}", None


CHECKS: tuple[tuple[str, Callable[[AgentConfig], tuple[str, str | None]]], ...] = (
    ("backend", backend),
    ("security", security),
    ("journal", journal),
    ("guard", guard),
)


def _state(path: Path, *, directory: bool) -> str:
    """Where the agent keeps state is private, or can be made so: said, never done."""
    folder = path if directory else path.parent
    if not os.path.lexists(folder):
        _creatable(folder)
        return f"{path} (created at start)"
    check_private(folder)
    if not directory and os.path.lexists(path):
        check_private(path)
    return str(path)


def _creatable(folder: Path) -> None:
    """Raise as ``run`` would when ``folder`` cannot be created (0700) by this user."""
    parent = folder.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{folder}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{folder}: cannot be created ({parent}: permission denied)")


def _runnable(program: str) -> bool:
    import shutil  # only here: run never needs it

    return shutil.which(program) is not None


def _where(config: AgentConfig) -> str:
    return f"config {config.source}: " if config.source else ""
