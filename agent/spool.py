"""Deferred commands, kept on disk until their final ack is published.

One file per command, named ``<sequence>-<command id>.cmd`` so that a directory listing
gives arrival order back. A file is written to a hidden temporary name, fsynced, renamed
into place and the directory fsynced: after :meth:`Spool.add` returns the command survives
a crash or power loss, and only then is the broker delivery acked. A file is removed only
after the command's final ack has been published (and confirmed).

Without a directory the spool lives in memory (as the journal does without a path): a
restart then loses deferred commands, so production configurations set one.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from schemas.codec import decode, encode
from schemas.messages import Command

log = logging.getLogger(__name__)

SUFFIX = ".cmd"


@dataclass(frozen=True, slots=True)
class Entry:
    sequence: int
    command: Command
    received_at: float  # wall clock of the first delivery (deferrals can span restarts)
    deferred_at: float
    reason: str  # the probe that said busy, for the interim ack

    @property
    def command_id(self) -> str:
        return self.command.command_id

    @property
    def filename(self) -> str:
        return f"{self.sequence:012d}-{self.command.command_id}{SUFFIX}"


class Spool:
    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[str, Entry] = {}  # insertion order is arrival order
        self._next = 1
        self._lock = threading.Lock()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def get(self, command_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(command_id)

    def pending(self) -> list[Entry]:
        """Every entry, in arrival order."""
        with self._lock:
            return list(self._entries.values())

    def add(self, command: Command, received_at: float, deferred_at: float, reason: str) -> Entry:
        """Store durably; a command already spooled is kept as it was (not spooled twice)."""
        with self._lock:
            known = self._entries.get(command.command_id)
            if known is not None:
                return known
            entry = Entry(self._next, command, received_at, deferred_at, reason)
            self._write(entry)
            self._next += 1
            self._entries[command.command_id] = entry
            return entry

    def remove(self, entry: Entry) -> None:
        with self._lock:
            if self._entries.pop(entry.command_id, None) is None:
                return
            if self.directory is None:
                return
            (self.directory / entry.filename).unlink(missing_ok=True)
            _fsync_directory(self.directory)

    def _write(self, entry: Entry) -> None:
        if self.directory is None:
            return
        body = msgpack.packb(
            {
                "command": encode(entry.command),
                "received_at": entry.received_at,
                "deferred_at": entry.deferred_at,
                "reason": entry.reason,
            },
            use_bin_type=True,
        )
        final = self.directory / entry.filename
        temporary = self.directory / f".{entry.filename}.tmp"
        with open(temporary, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        _fsync_directory(self.directory)

    def _load(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink()  # a crash mid-write: that delivery was never acked
                continue
            if not path.name.endswith(SUFFIX):
                continue
            entry = self._read(path)
            if entry is None:
                quarantined = path.with_name(path.name + ".bad")
                log.error("spool: unreadable %s, moved to %s", path, quarantined.name)
                os.replace(path, quarantined)
                continue
            if entry.command_id in self._entries:
                path.unlink()  # cannot happen through add(); keep the first if it does
                continue
            self._entries[entry.command_id] = entry
            self._next = max(self._next, entry.sequence + 1)
        if self._entries:
            log.info("spool %s: resuming %d deferred commands", self.directory, len(self))

    @staticmethod
    def _read(path: Path) -> Entry | None:
        try:
            sequence = int(path.name.split("-", 1)[0])
            data: dict[str, Any] = msgpack.unpackb(path.read_bytes(), raw=False)
            return Entry(
                sequence=sequence,
                command=decode(data["command"], Command),
                received_at=float(data["received_at"]),
                deferred_at=float(data["deferred_at"]),
                reason=str(data["reason"]),
            )
        except (OSError, ValueError, KeyError, TypeError):  # DecodeError is a ValueError
            return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    if os.name == "nt":  # directories cannot be opened there; NTFS journals renames
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
