"""Where the agent keeps its config and state by default: /run, or %ProgramData% on Windows.

A Windows service has no home directory worth the name and no /run; %ProgramData%\\setevnt
is machine-wide, survives reboots and is where an administrator looks for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PureWindowsPath

POSIX_LOCK = "/run/setevnt/distribution.lock"
PROGRAM_DATA = r"C:\ProgramData"  # when the variable is missing (a stripped service environment)


@dataclass(frozen=True, slots=True)
class Defaults:
    config: str | None  # read when no --config is given
    journal: str | None  # used when neither the config nor --journal names one
    lock: str


def setevnt_home(environ: Mapping[str, str]) -> PureWindowsPath:
    """%ProgramData%\\setevnt (environment names are case-blind on Windows; a Mapping is not)."""
    base = environ.get("ProgramData") or environ.get("PROGRAMDATA") or PROGRAM_DATA
    return PureWindowsPath(base) / "setevnt"


def defaults(os_name: str = os.name, environ: Mapping[str, str] | None = None) -> Defaults:
    if os_name != "nt":
        return Defaults(config=None, journal=None, lock=POSIX_LOCK)
    home = setevnt_home(os.environ if environ is None else environ)
    return Defaults(
        config=str(home / "agent.toml"),
        journal=str(home / "journal"),
        lock=str(home / "distribution.lock"),
    )
