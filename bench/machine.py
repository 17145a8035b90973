"""Where a pass's CPU went on the whole machine: its idle time and each process's.

The bench's publishers share the machine's cores with the broker, the simulated fleet and
the dispatcher service. When the machine has no idle time left, every CPU second one of
them spends is one the others wait for, so a pass's rate follows from the CPU all of
them spend per command. :class:`Machine` reads it from /proc: the machine's idle seconds
and the CPU seconds of each process it watches; :class:`Sampler` reads it every 20 ms
on a thread of the bench's, for a window known only afterwards (a storm's, from its
ledger).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

Reading = dict[str, float]  # "idle" and each role: CPU seconds so far

TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float | None:
    """A process's CPU seconds (all its threads), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def idle_seconds() -> float:
    """The machine's idle and I/O-wait seconds, all cores together."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / TICKS


@dataclass
class Machine:
    """The processes a pass shares the machine with, by role (broker, simulator, ...)."""

    pids: dict[str, int] = field(default_factory=dict)

    def watch(self, role: str, pid: int | None) -> None:
        if pid is not None:
            self.pids[role] = pid

    def reading(self, publisher: int) -> Reading:
        """CPU seconds so far: the machine's idle time, each watched process's, and the
        pass's ``publisher``'s."""
        values = {"idle": idle_seconds()}
        for role, pid in {**self.pids, "publisher": publisher}.items():
            seconds = process_seconds(pid)
            if seconds is not None:
                values[role] = seconds
        return values


def spent(before: Reading, after: Reading, seconds: float) -> dict[str, float]:
    """What each role spent between two readings ``seconds`` apart (``window_s`` too)."""
    return {"window_s": round(seconds, 2)} | {
        f"{role}_s": round(after[role] - before[role], 2) for role in before if role in after
    }


class Sampler:
    """:meth:`Machine.reading` every 20 ms, for :meth:`between` two moments afterwards."""

    EVERY = 0.02

    def __init__(self, machine: Machine, publisher: int) -> None:
        self._machine, self._publisher = machine, publisher
        self._samples: list[tuple[float, Reading]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.EVERY):
            self._samples.append((time.time(), self._machine.reading(self._publisher)))

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def between(self, start: float, end: float) -> dict[str, float] | None:
        """What was spent from ``start`` to ``end`` (epoch seconds), None without samples
        around both."""
        before, after = self._at(start), self._at(end)
        if before is None or after is None or end <= start:
            return None
        return spent(before, after, end - start)

    def _at(self, moment: float) -> Reading | None:
        """The reading at ``moment``, interpolated between the samples around it."""
        for (t0, r0), (t1, r1) in itertools.pairwise(self._samples):
            if t0 <= moment <= t1:
                share = (moment - t0) / (t1 - t0) if t1 > t0 else 0.0
                return {role: r0[role] + (r1[role] - r0[role]) * share for role in r0 if role in r1}
        return None
