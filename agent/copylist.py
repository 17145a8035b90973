"""The CopyListVersion this client reports: the version of its installed client component set.

KB Q174961: clients compared the site's ``CopyListVersion`` with the one stored locally
(``Sms.ini``) and ran client setup on a difference. Here the agent reports its version in
every heartbeat and the dispatcher compares (``dispatcher.service.drift``). The version is either
fixed in the configuration or read from a file the installer writes, at every heartbeat,
so a rewrite by client setup is reported without restarting the agent. In the file, a
``CopyListVersion=V`` line (as in ``Sms.ini``) wins; otherwise its first non-empty line is
the version.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agent.config import COPYLIST_MAX, AgentConfig, valid_copylist

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\s*CopyListVersion\s*=\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_READ_MAX = 64 * 1024  # a version file is a line or an ini file, never large


class CopyListVersion:
    """Read on the agent's I/O thread at each heartbeat: one small file read."""

    def __init__(self, value: str | None = None, path: str | None = None) -> None:
        self._value = value
        self._path = Path(path) if path is not None else None
        self._problem: str | None = None  # logged once, until it changes

    @classmethod
    def of(cls, config: AgentConfig) -> CopyListVersion:
        return cls(config.copylist_version, config.copylist_version_file)

    def read(self) -> str | None:
        """The file's version when it has a valid one, else the configured value (or None)."""
        if self._path is None:
            return self._value
        found, problem = self._from_file(self._path)
        if problem != self._problem:
            if problem is not None:
                fallback = f"reporting {self._value!r}" if self._value else "reporting none"
                log.warning("CopyListVersion file %s: %s; %s", self._path, problem, fallback)
            self._problem = problem
        return found if found is not None else self._value

    @staticmethod
    def _from_file(path: Path) -> tuple[str | None, str | None]:
        try:
            with path.open(encoding="utf-8", errors="replace") as source:
                text = source.read(_READ_MAX)
        except OSError as exc:
            return None, f"cannot read it ({exc.strerror})"
        match = _LINE.search(text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        version = match.group(1) if match else (lines[0] if lines else "")
        if not valid_copylist(version):
            return None, f"no version in it (want 1-{COPYLIST_MAX} printable characters)"
        return version, None
