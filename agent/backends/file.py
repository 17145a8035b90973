"""Touch a trigger file per event, or write the event name to a FIFO a component reads.

The agent runs as root, so it writes nowhere a link could send it: the trigger file and
the FIFO are opened without following a symbolic link in their place, must turn out to be
a regular file and a FIFO, and a directory any user can write to (``/tmp``-like, mode
o+w) is refused, at start-up and before every write.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult
from schemas.messages import Command

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class FileBackend:
    name = "file"

    def __init__(self, directory: str | None = None, fifo: str | None = None) -> None:
        if bool(directory) == bool(fifo):
            raise BackendConfigError("file: set exactly one of 'directory' or 'fifo'")
        self._directory = Path(directory) if directory else None
        self._fifo = Path(fifo) if fifo else None
        where = self._directory if self._directory is not None else self._fifo_directory
        if where.exists():
            problem = shared_directory(where)
            if problem is not None:
                raise BackendConfigError(f"file: {problem}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FileBackend:
        return cls(options.get("directory"), options.get("fifo"))

    @property
    def _fifo_directory(self) -> Path:
        assert self._fifo is not None
        return self._fifo.parent

    def signal(self, command: Command) -> SignalResult:
        if self._fifo is not None:
            return self._write_fifo(command)
        assert self._directory is not None
        path = self._directory / f"{command.event_name}.trigger"
        problem = shared_directory(self._directory)
        if problem is not None:
            return SignalResult(False, detail=f"file: {problem}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC, 0o644)
        except OSError as exc:
            return SignalResult(False, detail=f"file: {path}: {_why(exc)}")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return SignalResult(False, detail=f"file: {path} is not a regular file")
            os.ftruncate(fd, 0)
            os.write(fd, f"{command.command_id}\n".encode("ascii"))
        except OSError as exc:
            return SignalResult(False, detail=f"file: {path}: {exc.strerror}")
        finally:
            os.close(fd)
        return SignalResult(True, detail=f"file: wrote {path}")

    def _write_fifo(self, command: Command) -> SignalResult:
        assert self._fifo is not None
        problem = shared_directory(self._fifo_directory)
        if problem is not None:
            return SignalResult(False, detail=f"file: {problem}")
        try:
            # Non-blocking: with no component reading, fail now instead of hanging.
            fd = os.open(self._fifo, os.O_WRONLY | NONBLOCK | NOFOLLOW | CLOEXEC)
        except OSError as exc:
            why = "no component is reading it" if exc.errno == errno.ENXIO else _why(exc)
            return SignalResult(False, detail=f"file: fifo {self._fifo}: {why}")
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return SignalResult(False, detail=f"file: {self._fifo} is not a FIFO")
            os.write(fd, f"{command.event_name}\n".encode("ascii"))
        except OSError as exc:
            return SignalResult(False, detail=f"file: fifo {self._fifo}: {exc.strerror}")
        finally:
            os.close(fd)
        return SignalResult(True, detail=f"file: wrote {command.event_name} to {self._fifo}")


def shared_directory(directory: Path) -> str | None:
    """Why the agent will not write in ``directory`` (any user may write there), or None."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if os.name != "nt" and info.st_mode & stat.S_IWOTH:
        mode = stat.S_IMODE(info.st_mode)
        return (
            f"{directory} is writable by any user (mode {mode:04o}): the agent will not write there"
        )
    return None


def _why(exc: OSError) -> str:
    # O_NOFOLLOW on a link fails with ELOOP (EMLINK on some BSDs).
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return "a symbolic link is in its place; the agent does not follow it"
    return exc.strerror or str(exc)
