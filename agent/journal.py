"""Which commands this agent already finished, and the ack it sent for each.

A redelivered command (the broker lost our basic.ack, or we crashed after signalling)
is answered from here with the original ack instead of signalling the component again.
Each entry is appended and fsynced before the ack is published; the file is compacted to
the newest ``keep`` entries when it grows past twice that.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: str | Path | None, keep: int = 10_000) -> None:
        self._path = Path(path) if path is not None else None
        self._keep = keep
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lines = 0
        self._lock = threading.Lock()
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._load()

    def get(self, command_id: str) -> bytes | None:
        with self._lock:
            return self._entries.get(command_id)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, command_id: str, ack: bytes) -> None:
        with self._lock:
            self._remember(command_id, ack)
            if self._path is None:
                return
            with open(self._path, "a", encoding="ascii") as out:
                out.write(f"{command_id} {ack.hex()}\n")
                out.flush()
                os.fsync(out.fileno())
            self._lines += 1
            if self._lines > 2 * self._keep:
                self._compact()

    def _remember(self, command_id: str, ack: bytes) -> None:
        self._entries[command_id] = ack
        self._entries.move_to_end(command_id)
        while len(self._entries) > self._keep:
            self._entries.popitem(last=False)

    def _load(self) -> None:
        assert self._path is not None
        if not self._path.exists():
            return
        data = self._path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            # A torn last line after a crash mid-write: that entry was never acked. Cut it
            # off, or the next record would be appended to it and be lost with it.
            log.warning("journal %s: dropping a torn last line", self._path)
            with open(self._path, "r+b") as out:
                out.truncate(complete)
        lines = data[:complete].decode("ascii", "replace").split("\n")[:-1]
        for number, line in enumerate(lines, 1):
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError(f"{len(parts)} fields")
                command_id, ack = parts[0], bytes.fromhex(parts[1])
            except ValueError:
                log.warning("journal %s: skipping unreadable line %d", self._path, number)
                continue
            self._remember(command_id, ack)
            self._lines += 1

    def _compact(self) -> None:
        assert self._path is not None
        temporary = self._path.with_suffix(".compact")
        with open(temporary, "w", encoding="ascii") as out:
            for command_id, ack in self._entries.items():
                out.write(f"{command_id} {ack.hex()}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._path)
        self._lines = len(self._entries)
