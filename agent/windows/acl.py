"""Directories the agent creates on Windows: SYSTEM and Administrators only.

Windows ignores the 0700 that ``mkdir`` asks for: a new directory under %ProgramData%
inherits an ACL that lets every user read, and creators write. Whoever can take the
distribution lock, or write a spool or journal file, decides what the agent runs, so the
agent's directories drop the inherited entries and grant full control to the two SIDs
(well-known SIDs, not names, so that a localised Windows reads them the same).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath

SYSTEM = "*S-1-5-18"
ADMINISTRATORS = "*S-1-5-32-544"


def icacls(environ: Mapping[str, str]) -> str:
    """icacls from the system directory: a PATH another user controls picks no program here."""
    root = environ.get("SystemRoot") or environ.get("SYSTEMROOT") or r"C:\Windows"
    return str(PureWindowsPath(root) / "System32" / "icacls.exe")


def restrict_argv(path: str | Path, environ: Mapping[str, str]) -> list[str]:
    """The icacls call: no inherited entries, full control (inherited below) to the two SIDs."""
    return [
        icacls(environ),
        str(path),
        "/inheritance:r",
        "/grant:r",
        f"{SYSTEM}:(OI)(CI)F",
        f"{ADMINISTRATORS}:(OI)(CI)F",
    ]


def restrict(path: str | Path) -> None:
    """Apply the ACL; raise PermissionError saying why when icacls refuses."""
    done = subprocess.run(
        restrict_argv(path, os.environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        why = (done.stdout + done.stderr).strip().splitlines()
        raise PermissionError(
            f"{path}: cannot restrict it to SYSTEM and Administrators: "
            f"{why[-1] if why else f'icacls exited {done.returncode}'}"
        )
