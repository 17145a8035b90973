"""Touch a trigger file per event, or write the event name to a FIFO a component reads."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.backends.base import BackendConfigError, SignalResult
from schemas.messages import Command


class FileBackend:
    name = "file"

    def __init__(self, directory: str | None = None, fifo: str | None = None) -> None:
        if bool(directory) == bool(fifo):
            raise BackendConfigError("file: set exactly one of 'directory' or 'fifo'")
        self._directory = Path(directory) if directory else None
        self._fifo = fifo

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FileBackend:
        return cls(options.get("directory"), options.get("fifo"))

    def signal(self, command: Command) -> SignalResult:
        if self._fifo is not None:
            return self._write_fifo(command)
        assert self._directory is not None
        path = self._directory / f"{command.event_name}.trigger"
        try:
            path.write_text(f"{command.command_id}\n", encoding="ascii")
        except OSError as exc:
            return SignalResult(False, detail=f"file: {path}: {exc.strerror}")
        return SignalResult(True, detail=f"file: wrote {path}")

    def _write_fifo(self, command: Command) -> SignalResult:
        assert self._fifo is not None
        try:
            # Non-blocking: with no component reading, fail now instead of hanging.
            fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            why = "no component is reading it" if exc.errno == errno.ENXIO else exc.strerror
            return SignalResult(False, detail=f"file: fifo {self._fifo}: {why}")
        try:
            os.write(fd, f"{command.event_name}\n".encode("ascii"))
        except OSError as exc:
            return SignalResult(False, detail=f"file: fifo {self._fifo}: {exc.strerror}")
        finally:
            os.close(fd)
        return SignalResult(True, detail=f"file: wrote {command.event_name} to {self._fifo}")
