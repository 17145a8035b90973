"""Which commands this agent already finished, and the ack it sent for each.

A redelivered or replayed command is answered from here with the original ack instead of
signalling the component again. Each entry is appended and fsynced before the ack is
published, and kept until its command has expired (and an hour more, for a clock stepped
back): however many commands run meanwhile, one cannot run twice while it could still be
accepted. Expired entries are dropped at load and when the file is compacted; the agent
refuses commands that live longer than ``[agent] max_command_lifetime``, so what the
journal holds is bounded by what can run in that time.

A line is ``<command id> <ack as hex> <expiry>``. Lines of two fields, written by earlier
releases, load too: they are kept until ``max_lifetime`` after their command was issued.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import DEFAULT_MAX_LIFETIME
from agent.files import CLOEXEC, NOFOLLOW, check_private, fsync_directory, private_directory
from schemas.codec import DecodeError, decode
from schemas.messages import Ack

log = logging.getLogger(__name__)

RETAIN = 3600.0  # an entry outlives its command by this, so a clock stepped back replays nothing
PRUNE_EVERY = 60.0  # seconds between two drops of expired entries from memory
COMPACT_SLACK = 1000  # lines beyond twice the live entries before the file is rewritten


@dataclass(frozen=True, slots=True)
class Kept:
    until: float  # wall clock: dropped after this
    ack: bytes


class Journal:
    def __init__(
        self,
        path: str | Path | None,
        *,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path) if path is not None else None
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._entries: dict[str, Kept] = {}
        self._lines = 0
        self._next_prune = clock() + PRUNE_EVERY
        self._lock = threading.Lock()
        if self._path is not None:
            private_directory(self._path.parent)
            self._load()

    def get(self, command_id: str) -> bytes | None:
        with self._lock:
            kept = self._entries.get(command_id)
        return None if kept is None else kept.ack

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, command_id: str, ack: bytes, expires_at: float) -> None:
        """Remember ``ack`` (fsynced when on disk) until ``expires_at`` has long passed."""
        with self._lock:
            until = expires_at + RETAIN
            self._entries[command_id] = Kept(until, ack)
            if self._path is not None:
                self._append(f"{command_id} {ack.hex()} {until:.3f}\n")
            now = self._clock()
            if now >= self._next_prune:
                self._prune(now)
            if self._path is not None and self._lines > 2 * len(self._entries) + COMPACT_SLACK:
                self._compact()

    # -- the file -------------------------------------------------------------------------

    def _append(self, line: str) -> None:
        assert self._path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | CLOEXEC
        fd = os.open(self._path, flags, 0o600)
        try:
            os.write(fd, line.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1

    def _prune(self, now: float) -> None:
        expired = [cid for cid, kept in self._entries.items() if kept.until <= now]
        for command_id in expired:
            del self._entries[command_id]
        self._next_prune = now + PRUNE_EVERY

    def _load(self) -> None:
        assert self._path is not None
        if not self._path.exists() and not self._path.is_symlink():
            return
        check_private(self._path)
        fd = os.open(self._path, os.O_RDONLY | NOFOLLOW | CLOEXEC)
        with os.fdopen(fd, "rb") as source:
            data = source.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            # A torn last line after a crash mid-write: that entry was never acked. Cut it
            # off, or the next record would be appended to it and be lost with it.
            log.warning("journal %s: dropping a torn last line", self._path)
            os.truncate(self._path, complete)
        now = self._clock()
        lines = data[:complete].decode("ascii", "replace").split("\n")[:-1]
        for number, line in enumerate(lines, 1):
            self._lines += 1
            try:
                command_id, kept = self._parse(line)
            except ValueError:
                log.warning("journal %s: skipping unreadable line %d", self._path, number)
                continue
            if kept.until > now:
                self._entries[command_id] = kept
        self._next_prune = now + PRUNE_EVERY

    def _parse(self, line: str) -> tuple[str, Kept]:
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{len(parts)} fields")
        ack = bytes.fromhex(parts[1])
        until = float(parts[2]) if len(parts) == 3 else self._until_of_old(ack)
        if until != until:  # NaN would never expire
            raise ValueError("expiry is not a number")
        return parts[0], Kept(until, ack)

    def _until_of_old(self, ack: bytes) -> float:
        """A line of an earlier release: no command it names lives past this."""
        try:
            issued_at = decode(ack, Ack).issued_at
        except DecodeError:
            issued_at = None
        start = self._clock() if issued_at is None else issued_at
        return start + self._max_lifetime + RETAIN

    def _compact(self) -> None:
        assert self._path is not None
        self._prune(self._clock())
        temporary = self._path.with_name(self._path.name + ".compact")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW | CLOEXEC
        fd = os.open(temporary, flags, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            for command_id, kept in self._entries.items():
                out.write(f"{command_id} {kept.ack.hex()} {kept.until:.3f}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._path)
        fsync_directory(self._path.parent)
        self._lines = len(self._entries)
