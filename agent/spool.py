"""Commands the agent holds for later, kept on disk until their final ack is published.

Two kinds wait here: commands *deferred* while a software distribution runs (their
interim ``deferred`` ack went out when they were spooled), and commands *scheduled* for a
later start time (``not_before``: nothing is answered until they ran). Either way the
broker delivery is acked only once the command is spooled, so no delivery is held open.

One file per command, named ``<sequence>-<command id>.cmd`` so that a directory listing
gives arrival order back. A file is written to a hidden temporary name, fsynced, renamed
into place and the directory fsynced: after :meth:`Spool.add` returns the command survives
a crash or power loss. A file is removed only after the command's final ack has been
published (and confirmed).

A file keeps the command's body exactly as delivered and its signature headers, and is
checked again when the spool is loaded: an entry that no longer verifies (written by
someone else, or signed by a key this agent stopped trusting) is moved aside to
``.bad`` and listed in :attr:`Spool.quarantined`, to be answered ``bad-signature``. In
memory an entry holds only the decoded command: a body may carry up to 64 KiB of fields
from a newer schema, which the agent has no use for.

Without a directory the spool lives in memory (as the journal does without a path): a
restart then loses what waits, so `setevnt-agent run` always has one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgpack

from agent.files import CLOEXEC, NOFOLLOW, check_private, fsync_directory, private_directory
from schemas.codec import MAX_BODY, decode, encode
from schemas.messages import Command

log = logging.getLogger(__name__)

SUFFIX = ".cmd"
FILE_MAX = 4 * MAX_BODY  # a body, its headers and a few numbers: anything larger is not ours

Check = Callable[[bytes, Mapping[str, object] | None], str | None]  # why not to obey, or None


class Hold(StrEnum):
    DEFERRED = "deferred"  # a distribution was running; its deferred ack went out
    SCHEDULED = "scheduled"  # its start time had not come; nothing was answered yet


@dataclass(frozen=True, slots=True)
class Entry:
    sequence: int
    command: Command
    received_at: float  # wall clock of the first delivery (a wait can span restarts)
    deferred_at: float  # when it was spooled
    reason: str  # the probe that said busy, for the interim ack; "" when scheduled
    hold: Hold = Hold.DEFERRED

    @property
    def command_id(self) -> str:
        return self.command.command_id

    @property
    def filename(self) -> str:
        return f"{self.sequence:012d}-{self.command.command_id}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class Stored:
    """An entry as read from its file, with what its signature covers."""

    entry: Entry
    body: bytes  # the command as delivered
    headers: Mapping[str, str] | None  # its signature headers


@dataclass(frozen=True, slots=True)
class Refused:
    """A spooled entry that failed its signature check on load."""

    entry: Entry
    problem: str


class Spool:
    def __init__(self, directory: str | Path | None, *, check: Check | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[str, Entry] = {}  # insertion order is arrival order
        self._next = 1
        self._lock = threading.Lock()
        self._check = check
        self.quarantined: list[Refused] = []
        if self.directory is not None:
            private_directory(self.directory)
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

    def add(
        self,
        command: Command,
        received_at: float,
        deferred_at: float,
        reason: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        hold: Hold = Hold.DEFERRED,
    ) -> Entry:
        """Store durably; a command already spooled is kept as it was (not spooled twice)."""
        with self._lock:
            known = self._entries.get(command.command_id)
            if known is not None:
                return known
            entry = Entry(self._next, command, received_at, deferred_at, reason, hold)
            self._write(entry, encode(command) if body is None else body, headers)
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
            fsync_directory(self.directory)

    def _write(self, entry: Entry, body: bytes, headers: Mapping[str, str] | None) -> None:
        if self.directory is None:
            return
        record = {
            "body": body,
            "headers": dict(headers) if headers else None,
            "hold": entry.hold.value,
            "received_at": entry.received_at,
            "deferred_at": entry.deferred_at,
            "reason": entry.reason,
        }
        final = self.directory / entry.filename
        temporary = self.directory / f".{entry.filename}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
        with os.fdopen(os.open(temporary, flags, 0o600), "wb") as out:
            out.write(msgpack.packb(record, use_bin_type=True))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        fsync_directory(self.directory)

    # -- loading --------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink()  # a crash mid-write: that delivery was never acked
                continue
            if not path.name.endswith(SUFFIX):
                continue
            check_private(path)
            stored = self._read(path)
            if stored is None:
                self._set_aside(path, "unreadable")
                continue
            entry = stored.entry
            problem = self._check(stored.body, stored.headers) if self._check else None
            if problem is not None:
                self._set_aside(path, f"{entry.command_id} fails its signature check: {problem}")
                self.quarantined.append(Refused(entry, problem))
                continue
            if entry.command_id in self._entries:
                path.unlink()  # cannot happen through add(); keep the first if it does
                continue
            self._entries[entry.command_id] = entry
            self._next = max(self._next, entry.sequence + 1)
        if self._entries:
            log.info("spool %s: resuming %d waiting commands", self.directory, len(self))

    def _set_aside(self, path: Path, why: str) -> None:
        quarantined = path.with_name(path.name + ".bad")
        log.error("spool: %s: %s; moved to %s", path, why, quarantined.name)
        os.replace(path, quarantined)

    @staticmethod
    def _read(path: Path) -> Stored | None:
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC), "rb") as source:
                raw = source.read(FILE_MAX + 1)
            if len(raw) > FILE_MAX:
                return None
            data: dict[str, Any] = msgpack.unpackb(raw, raw=False)
            # Entries of earlier releases kept the command re-encoded and no signature.
            body = data["body"] if "body" in data else data["command"]
            if not isinstance(body, bytes):
                return None
            entry = Entry(
                sequence=_sequence(path),
                command=decode(body, Command),
                received_at=float(data["received_at"]),
                deferred_at=float(data["deferred_at"]),
                reason=str(data["reason"]),
                hold=Hold(data.get("hold", Hold.DEFERRED.value)),
            )
            return Stored(entry, body, _headers(data.get("headers")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # DecodeError and msgpack's errors are ValueErrors


def _sequence(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[0])
    except ValueError:
        return 0


def _headers(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("headers: not a map of text")
    return value
