"""What a storm looks like to an operator: counts, latency, a progress bar, JSON.

One :class:`StormView` is built either from a running storm's memory (its own progress
display) or from the ledger (``status``, from any process, after any restart), and
rendered the same way: a one-line bar on a terminal, plain lines otherwise, or JSON.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from dispatcher.store.ledger import ERRORS, CommandRecord, StormFigures, StormRecord
from dispatcher.store.ledger_rows import STALE_AFTER as STALE_AFTER  # where callers found it
from dispatcher.store.ledger_rows import Status, StormState

# The live display's rate is measured over this much of the recent past: long enough to
# smooth a bursty window, short enough to follow a rate that changes.
PACE_WINDOW = 10.0


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast a running storm settles its commands, and when it will at that rate."""

    per_second: float
    eta: float | None  # seconds; None while nothing has settled yet


@dataclass(frozen=True, slots=True)
class StormView:
    storm_id: str
    event: str
    state: str
    reason: str | None
    targets: int
    counts: Mapping[str, int]
    published: int
    latencies: Sequence[float] = field(default=())  # sorted
    created_at: float | None = None
    publishing_at: float | None = None
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    last_acked_at: float | None = None
    finished_at: float | None = None
    observed_at: float | None = None  # when these figures were read

    def count(self, *statuses: str) -> int:
        return sum(self.counts.get(s, 0) for s in statuses)

    @property
    def acked(self) -> int:
        return self.count(Status.DONE)

    @property
    def failed(self) -> int:
        return self.count(*ERRORS)

    @property
    def pending(self) -> int:
        return self.count(Status.SENT, Status.PENDING_OFFLINE, Status.WAITING_NODE)

    @property
    def unsent(self) -> int:
        return self.count(Status.PLANNED)

    @property
    def cancelled(self) -> int:
        return self.count(Status.CANCELLED)

    @property
    def settled(self) -> int:
        return self.targets - self.count(Status.PLANNED, Status.SENT)

    @property
    def to_publish(self) -> int:
        """The commands the storm publishes: cancelled and coalesced ones it never does."""
        return self.targets - self.count(Status.CANCELLED, Status.COALESCED)

    def pace(self) -> Pace | None:
        """A running storm's average pace since its first publish (None once it ended)."""
        start = self.publishing_at or self.created_at
        if self.state != StormState.RUNNING or start is None or self.observed_at is None:
            return None
        # Coalesced commands settle when the storm is planned: they say nothing of its pace.
        return pace_of(self.settled - self.count(Status.COALESCED), self.observed_at - start, self)

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        rank = max(0, math.ceil(p / 100 * len(self.latencies)) - 1)
        return self.latencies[rank]

    def seconds(self, at: float | None) -> float | None:
        if at is None or self.created_at is None:
            return None
        return round(at - self.created_at, 3)

    def enqueue_seconds(self) -> float | None:
        """First publish to last confirm: how a bare publisher's rate is measured too."""
        if self.publishing_at is None or self.last_sent_at is None:
            return None
        return round(self.last_sent_at - self.publishing_at, 3)

    def as_json(self) -> dict[str, Any]:
        enqueue = self.enqueue_seconds()
        end_to_end = self.seconds(self.last_sent_at)
        all_acked = None
        if self.state != StormState.RUNNING and self.pending == 0 and self.unsent == 0:
            all_acked = self.seconds(self.last_acked_at)
        return {
            "storm_id": self.storm_id,
            "event": self.event,
            "state": self.state,
            "reason": self.reason,
            "targets": self.targets,
            "published": self.published,
            "acked": self.acked,
            "deferred": self.count(Status.DEFERRED),
            "failed": self.failed,
            "pending": self.pending,
            "pending_offline": self.count(Status.PENDING_OFFLINE),
            "waiting_node": self.count(Status.WAITING_NODE),
            "coalesced": self.count(Status.COALESCED),
            "cancelled": self.count(Status.CANCELLED),
            "unsent": self.unsent,
            "counts": dict(sorted((k, v) for k, v in self.counts.items() if v)),
            "latency_s": {f"p{p}": _round(self.percentile(p)) for p in (50, 95, 99)},
            "startup_s": self.seconds(self.publishing_at),
            "enqueue_seconds": enqueue,
            "enqueue_per_second": _rate(self.published, enqueue),
            "end_to_end_per_second": _rate(self.published, end_to_end),
            "all_acked_after_s": all_acked,
            **_pace_json(self.pace()),
        }


def from_ledger(storm: StormRecord, figures: StormFigures, now: float | None = None) -> StormView:
    now = time.time() if now is None else now
    state = storm.state
    if state == StormState.RUNNING and not storm.alive(now, STALE_AFTER):
        state = StormState.INTERRUPTED  # its process died: resume it or read what was sent below
    return StormView(
        storm_id=storm.storm_id,
        event=f"{storm.component}_{storm.event}",
        state=state,
        reason=storm.reason,
        targets=storm.targets,
        counts=figures.counts,
        published=figures.published,
        latencies=figures.latencies,
        created_at=storm.created_at,
        publishing_at=storm.publishing_at,
        first_sent_at=figures.first_sent_at,
        last_sent_at=figures.last_sent_at,
        last_acked_at=figures.last_acked_at,
        finished_at=storm.finished_at,
        observed_at=now,
    )


def pace_of(settled: int, seconds: float, view: StormView) -> Pace:
    """``settled`` commands in ``seconds``; the rest of ``view``'s targets at that rate."""
    if settled <= 0 or seconds <= 0:
        return Pace(0.0, None)
    rate = settled / seconds
    return Pace(rate, max(0, view.targets - view.settled) / rate)


def bar(view: StormView, width: int = 28, pace: Pace | None = None) -> str:
    """One line: how far the storm is, what became of its commands, its pace."""
    total = max(1, view.targets)
    filled = min(width, round(width * view.settled / total))
    cancelled = f"  cancelled {view.cancelled}" if view.cancelled else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {100 * view.settled / total:3.0f}% "
        f"published {view.published}/{view.to_publish}{cancelled}  acked {view.acked}  "
        f"deferred {view.count(Status.DEFERRED)}  failed {view.failed}  pending {view.pending}"
        + pace_text(pace if pace is not None else view.pace(), "  ")
    )


def pace_text(pace: Pace | None, lead: str = "") -> str:
    if pace is None:
        return ""
    eta = eta_text(pace.eta) if pace.eta is not None else "-"
    return f"{lead}{pace.per_second:.0f}/s  eta {eta}"


def eta_text(seconds: float) -> str:
    """4s, 2m05s, 1h02m: minutes and seconds matter while waiting, not fractions."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def lines(view: StormView) -> list[str]:
    count = view.count
    out = [
        f"storm {view.storm_id}: {view.event} on {view.targets} client(s): {view.state}"
        + (f" ({view.reason})" if view.reason else ""),
        f"  published {view.published}  acked {view.acked}  deferred {count(Status.DEFERRED)}  "
        f"failed {view.failed}  pending {view.pending} "
        f"(offline {count(Status.PENDING_OFFLINE)}, node down {count(Status.WAITING_NODE)})  "
        f"coalesced {count(Status.COALESCED)}  "
        f"cancelled {count(Status.CANCELLED)}  not sent {view.unsent}",
    ]
    if view.latencies:
        shown = "  ".join(f"p{p} {_ms(view.percentile(p))}" for p in (50, 95, 99))
        out.append(f"  trigger latency {shown}")
    pace = view.pace()
    if pace is not None:
        out.append(f"  settling {pace_text(pace)} (average since its first publish)")
    if view.state == StormState.INTERRUPTED:
        out.append(
            f"  its dispatcher stopped: {view.published} command(s) were confirmed sent, "
            f"{view.unsent} were not; `setevnt-dispatcher resume {view.storm_id}` sends the rest"
        )
    return out


def command_lines(command: CommandRecord) -> list[str]:
    event = f"{command.component}_{command.event}" if command.component else "?"
    latency = f"  latency {_ms(command.latency)}" if command.latency is not None else ""
    why = " ".join(p for p in (command.reason, command.detail) if p)
    out = [f"command {command.command_id}: {event} on {command.client_id}: {command.status}"]
    out.append(f"  storm {command.storm_id or '-'}{latency}" + (f"  {why}" if why else ""))
    if command.coalesced_into:
        out.append(f"  coalesced into the pending command {command.coalesced_into}")
    return out


class Pacer:
    """A running storm's pace over the last :data:`PACE_WINDOW` seconds of what it settled."""

    def __init__(self, window: float = PACE_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, view: StormView, at: float | None = None) -> Pace | None:
        if view.state != StormState.RUNNING:
            return None
        now = time.monotonic() if at is None else at
        self._samples.append((now, view.settled))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        first_at, first = self._samples[0]
        return pace_of(view.settled - first, now - first_at, view)


class Display:
    """Live progress: a redrawn bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool, plain_every: float = 5.0) -> None:
        self._stream = stream
        self._tty = tty
        self._plain_every = plain_every
        self._next_plain = 0.0
        self._drawn = False
        self._pacer = Pacer()

    def show(self, view: StormView, *, final: bool = False) -> None:
        pace = self._pacer.observe(view)
        if self._tty:
            self._stream.write("\r\x1b[2K" + bar(view, pace=pace))
            self._drawn = True
        elif final or time.monotonic() >= self._next_plain:
            self._next_plain = time.monotonic() + self._plain_every
            self._stream.write(bar(view, pace=pace).split("] ", 1)[1] + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def watch(read: Callable[[], StormView], every: float = 0.5) -> None:
    """Redraw a storm's bar on the terminal until it ends (or Ctrl-C)."""
    display = Display(sys.stdout, tty=True)
    try:
        while True:
            view = read()
            display.show(view)
            if view.state != StormState.RUNNING:
                break
            time.sleep(every)
    except KeyboardInterrupt:
        pass
    finally:
        display.done()


def print_view(view: StormView, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view.as_json(), sort_keys=True))
    else:
        print("\n".join(lines(view)))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _pace_json(pace: Pace | None) -> dict[str, float | None]:
    if pace is None:
        return {"rate_per_second": None, "eta_s": None}
    eta = round(pace.eta, 1) if pace.eta is not None else None
    return {"rate_per_second": round(pace.per_second, 1), "eta_s": eta}


def _rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and count else None


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
