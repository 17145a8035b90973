"""Where a pass's CPU went on the whole machine: its idle time and each process's.

The bench's publishers share the machine's cores with the broker, the simulated fleet and
the dispatcher service. When the machine has no idle time left, every CPU second one of
them spends is one the others wait for, so a pass's rate follows from the CPU all of
them spend per command. :class:`Machine` reads it from /proc: the machine's idle seconds
and the CPU seconds of each process it watches; :class:`Sampler` reads it every 20 ms
in a process of its own, for a window known only afterwards (a storm's, from its
ledger). Every timed pass, the bare publisher's and the storm's alike, runs beside a
sampler: the sampling costs both the same CPU, and none of it in either publisher.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
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
    """:meth:`Machine.reading` every 20 ms from a process of its own, for :meth:`between`
    two moments afterwards; a context manager that stops it."""

    EVERY = 0.02
    READY_WAIT = 30.0  # seconds for the sampling process to take its first reading

    def __init__(self, machine: Machine, publisher: int) -> None:
        self._samples: list[tuple[float, Reading]] = []
        self._out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        # The sampling process shares this file's offset, which reading here moves back:
        # appending, its lines land after the others instead of over what was read.
        descriptor = self._out.fileno()
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_APPEND)
        roles = [f"{role}={pid}" for role, pid in {**machine.pids, "publisher": publisher}.items()]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.machine", "--every", str(self.EVERY), *roles],
            cwd=Path(__file__).resolve().parents[1],
            stdout=self._out,
        )
        self._ready()

    def _ready(self) -> None:
        """Wait for the first reading: a window that starts before it has no samples."""
        deadline = time.monotonic() + self.READY_WAIT
        while os.fstat(self._out.fileno()).st_size == 0:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("bench: the machine sampler did not start")
            time.sleep(0.01)

    def stop(self, covering: float | None = None) -> None:
        """Stop sampling; ``covering``: once a reading was taken after that moment (epoch
        seconds), so that a window ending then has samples around it."""
        if covering is not None:
            self._wait_for_reading_after(covering)
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        self._process.wait()
        self._out.seek(0)
        # A line the stop cut short is not a reading.
        lines = [line for line in self._out if line.endswith("\n")]
        self._samples = [(at, reading) for at, reading in map(json.loads, lines)]
        self._out.close()

    def _wait_for_reading_after(self, moment: float) -> None:
        deadline = time.monotonic() + self.READY_WAIT
        while time.monotonic() < deadline and self._process.poll() is None:
            self._out.seek(0)
            lines = [line for line in self._out if line.endswith("\n")]
            if lines and json.loads(lines[-1])[0] > moment:
                return
            time.sleep(self.EVERY)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._out.closed:
            self.stop()

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


def _sample(every: float, roles: list[str]) -> None:
    """The sampling process: one JSON line ``[epoch seconds, reading]`` every ``every``
    seconds, until SIGTERM."""
    machine = Machine({role: int(pid) for role, pid in (each.split("=") for each in roles)})
    publisher = machine.pids.pop("publisher")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        print(json.dumps([time.time(), machine.reading(publisher)]), flush=True)
        time.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(description="The bench's machine sampler (see Sampler).")
    parser.add_argument("--every", type=float, default=Sampler.EVERY, help="seconds")
    parser.add_argument("roles", nargs="+", metavar="ROLE=PID", help="publisher=PID among them")
    args = parser.parse_args()
    _sample(args.every, args.roles)


if __name__ == "__main__":
    main()
