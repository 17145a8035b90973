"""The storm report's charts: inline SVG drawn here, so the page needs no script or network.

Two charts: the trigger-latency histogram and the outcome timeline (final acks over time,
stacked by status). Pure functions from numbers to SVG markup; every text that could come
from the ledger is escaped by the caller's data path (statuses) or here (titles).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from dispatcher.store.ledger_rows import Status

# Okabe & Ito's palette: tells statuses apart with every common colour-vision deficiency.
# Statuses are always named next to their colour too (legend, tables, tooltips).
STATUS_COLOURS: Mapping[str, str] = {
    Status.DONE: "#009E73",
    Status.DEFERRED: "#F0E442",
    Status.COALESCED: "#56B4E9",
    Status.SENT: "#0072B2",
    Status.PENDING_OFFLINE: "#999999",
    Status.WAITING_NODE: "#BBBBBB",
    Status.FAILED: "#D55E00",
    Status.REJECTED: "#CC79A7",
    Status.EXPIRED: "#E69F00",
    Status.UNROUTABLE: "#000000",
    Status.NACKED: "#7F3C8D",
    Status.CANCELLED: "#CCCCCC",
    Status.PLANNED: "#E8E8E8",
}
OTHER_COLOUR = "#666666"
BAR_COLOUR = "#0072B2"
OVERFLOW_COLOUR = "#8C8C8C"

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 24, 64
HISTOGRAM_BINS = 30
TIMELINE_BINS = 40


def status_colour(status: str) -> str:
    return STATUS_COLOURS.get(status, OTHER_COLOUR)


def status_order(statuses: Sequence[str]) -> list[str]:
    """Known statuses in the palette's order (successes first), unknown ones after."""
    known = [s for s in STATUS_COLOURS if s in statuses]
    return known + sorted(set(statuses) - set(known))


# -- scales ----------------------------------------------------------------------------


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least ``raw``: round numbers on the axes."""
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw * (1 - 1e-9):
            return float(factor * power)
    return float(10 * power)


def time_unit(largest_seconds: float) -> tuple[str, float]:
    """The unit an axis spanning up to ``largest_seconds`` reads best in, and its factor."""
    if largest_seconds < 2:
        return "ms", 1000.0
    if largest_seconds < 600:
        return "s", 1.0
    return "min", 1 / 60


def number(value: float, step: float) -> str:
    """``value`` with as many decimals as ``step`` needs (0.25 -> 2, 5 -> 0)."""
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"{value:.{decimals}f}"


def duration(seconds: float) -> str:
    unit, factor = time_unit(seconds * 1.0001)
    step = nice_step(seconds * factor / 10) if seconds > 0 else 1.0
    return f"{number(seconds * factor, min(step, 1.0))} {unit}"


def latency_text(seconds: float | None) -> str:
    """A latency as a person reads it: 3.4 ms, 250 ms, 2.53 s, 12.3 s, 12.5 min."""
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


@dataclass(frozen=True, slots=True)
class Frame:
    """The plot area of one chart and its linear scales (counts always start at zero)."""

    x_min: float
    x_max: float
    y_max: float

    def x(self, value: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (value - self.x_min) / (self.x_max - self.x_min)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * value / self.y_max


def _ticks(low: float, high: float, step: float) -> list[float]:
    first = math.ceil(low / step - 1e-9)
    return [i * step for i in range(first, int(high / step + 1e-9) + 1)]


def _count_scale(largest: int) -> tuple[float, float]:
    """A y axis for counts: (its top, its tick step), whole numbers only."""
    step = max(1.0, nice_step(largest / 5))
    return step * math.ceil(max(largest, 1) / step), step


def _axes(
    frame: Frame,
    x_ticks: Sequence[tuple[float, str]],
    y_step: float,
    labels: tuple[str, str],
) -> list[str]:
    left, right = LEFT, WIDTH - RIGHT
    bottom = HEIGHT - BOTTOM
    out: list[str] = []
    for value in _ticks(0, frame.y_max, y_step):
        y = frame.y(value)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{value:.0f}</text>"
        )
    for value, text in x_ticks:
        x = frame.x(value)
        out.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" class="axis"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{bottom + 20}" text-anchor="middle" class="tick">{text}</text>'
        )
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>')
    out.append(f'<line x1="{left}" y1="{TOP}" x2="{left}" y2="{bottom}" class="axis"/>')
    x_label, y_label = labels
    middle_y = (TOP + bottom) / 2
    out.append(
        f'<text x="{(left + right) / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle" '
        f'class="label">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(18 {middle_y:.1f}) rotate(-90)" text-anchor="middle" '
        f'class="label">{escape(y_label)}</text>'
    )
    return out


def _svg(ident: str, title: str, description: str, body: Sequence[str]) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="chart" '
        f'aria-labelledby="{ident}-title {ident}-desc">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )


def _rect(x0: float, x1: float, y0: float, y1: float, fill: str, tip: str) -> str:
    width = max(1.0, x1 - x0 - 1)  # a 1 px gap keeps neighbouring bars apart
    return (
        f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{max(0.0, y0 - y1):.1f}" '
        f'fill="{fill}"><title>{escape(tip)}</title></rect>'
    )


# -- the latency histogram -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bins:
    start: float  # seconds; above zero when every latency is far from zero
    width: float
    counts: list[int]
    overflow: int  # latencies beyond the last bin, drawn as one separate bar

    @property
    def end(self) -> float:
        return self.start + self.width * len(self.counts)


def latency_bins(latencies: Sequence[float], p95: float, p99: float) -> Bins:
    """Even bins up to the slowest latency; or, when a few stragglers would squeeze every
    other command into the first bar, up to p99 (or past p95) with one overflow bar.
    When the fastest is over half the slowest, the axis starts near it instead of at
    zero, or a tight distribution would be a few bars at the edge."""
    largest, fastest = max(latencies), min(latencies)
    if largest <= 2 * p99:
        cap = largest
    elif p99 <= 3 * p95:
        cap = p99
    else:
        cap = 1.5 * p95
    low = fastest if 0 < cap <= 2 * fastest else 0.0
    width = nice_step((cap - low) / HISTOGRAM_BINS) if cap > low else 0.001
    start = width * math.floor(low / width + 1e-9)
    size = max(1, math.ceil((cap - start) / width - 1e-9))
    counts = [0] * size
    overflow = 0
    for value in latencies:
        if value > start + size * width:
            overflow += 1
        else:
            counts[min(int((value - start) / width), size - 1)] += 1
    return Bins(start, width, counts, overflow)


def histogram_svg(latencies: Sequence[float], percentiles: Mapping[int, float]) -> str:
    """Trigger latencies (seconds, at least one) with their percentiles ({50: 0.12, ...},
    including 95 and 99) marked."""
    bins = latency_bins(latencies, percentiles[95], percentiles[99])
    unit, factor = time_unit(bins.end)
    x_max = bins.end + (1.6 * bins.width if bins.overflow else 0)
    y_max, y_step = _count_scale(max([*bins.counts, bins.overflow]))
    frame = Frame(bins.start, x_max, y_max)
    x_step = nice_step((bins.end - bins.start) / 10)
    ticks = [(v, number(v * factor, x_step * factor)) for v in _ticks(bins.start, bins.end, x_step)]
    label = f"Trigger latency ({unit})"
    if bins.start > 0:  # say so: a reader assumes an axis starts at zero
        label += f"; the axis starts at {number(bins.start * factor, x_step * factor)} {unit}"
    body = _axes(frame, ticks, y_step, (label, "Commands"))
    base = frame.y(0)
    for i, count in enumerate(bins.counts):
        if count:
            low = bins.start + i * bins.width
            high = low + bins.width
            tip = f"{_span(low, high, unit, factor, bins.width)}: {count} command(s)"
            body.append(_rect(frame.x(low), frame.x(high), base, frame.y(count), BAR_COLOUR, tip))
    if bins.overflow:
        body += _overflow(frame, bins, unit, factor)
    body += _marks(frame, bins, percentiles)
    text = f"{len(latencies)} answered commands by trigger latency, in {unit}"
    return _svg("latency", "Trigger latency distribution", text, body)


def _span(low: float, high: float, unit: str, factor: float, step: float) -> str:
    return f"{number(low * factor, step * factor)}-{number(high * factor, step * factor)} {unit}"


def _overflow(frame: Frame, bins: Bins, unit: str, factor: float) -> list[str]:
    low, high = bins.end + 0.5 * bins.width, bins.end + 1.5 * bins.width
    slower = f"{number(bins.end * factor, bins.width * factor)} {unit}"
    tip = f"slower than {slower}: {bins.overflow} command(s)"
    x = (frame.x(low) + frame.x(high)) / 2
    return [
        _rect(
            frame.x(low), frame.x(high), frame.y(0), frame.y(bins.overflow), OVERFLOW_COLOUR, tip
        ),
        f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 34}" text-anchor="middle" class="tick">'
        f"&gt; {escape(slower)}</text>",
    ]


def _marks(frame: Frame, bins: Bins, percentiles: Mapping[int, float]) -> list[str]:
    """Dashed lines at the percentiles, labels staggered so close ones stay legible; one
    beyond the axis stands on the overflow bar."""
    out = []
    for row, (p, value) in enumerate(sorted(percentiles.items())):
        where = value if value <= bins.end else bins.end + bins.width
        x = frame.x(where)
        anchor, dx = ("start", 5) if x < WIDTH - RIGHT - 130 else ("end", -5)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" class="mark"/>'
        )
        out.append(
            f'<text x="{x + dx:.1f}" y="{TOP + 14 + 16 * row}" text-anchor="{anchor}" '
            f'class="marklabel">p{p} {latency_text(value)}</text>'
        )
    return out


# -- the outcome timeline --------------------------------------------------------------


def timeline_svg(acks: Sequence[tuple[float, str]]) -> str:
    """Final acks (seconds since the storm started, status; at least one) per interval,
    stacked by status."""
    span = max(t for t, _ in acks)
    width = nice_step(span / TIMELINE_BINS) if span > 0 else 0.001
    size = int(span / width) + 1
    stacks: list[Counter[str]] = [Counter() for _ in range(size)]
    for t, status in acks:
        stacks[min(int(max(0.0, t) / width), size - 1)][status] += 1
    order = status_order([s for _, s in acks])
    unit, factor = time_unit(size * width)
    x_step = nice_step(size * width / 8)
    y_max, y_step = _count_scale(max(sum(c.values()) for c in stacks))
    frame = Frame(0.0, size * width, y_max)
    ticks = [(v, number(v * factor, x_step * factor)) for v in _ticks(0, size * width, x_step)]
    labels = (f"Time since the storm started ({unit})", f"Acks per {duration(width)}")
    body = _axes(frame, ticks, y_step, labels)
    for i, stack in enumerate(stacks):
        low, high = i * width, (i + 1) * width
        when = _span(low, high, unit, factor, width)
        body += _stack(frame, stack, order, (low, high), when)
    text = f"{len(acks)} final acks over time, stacked by status, in intervals of {duration(width)}"
    return _svg("timeline", "Outcome timeline", text, body)


def _stack(
    frame: Frame,
    stack: Counter[str],
    order: Sequence[str],
    interval: tuple[float, float],
    when: str,
) -> list[str]:
    low, high = interval
    out, below = [], 0
    for status in order:
        count = stack.get(status, 0)
        if count:
            y0, y1 = frame.y(below), frame.y(below + count)
            tip = f"{when}: {count} {status}"
            out.append(_rect(frame.x(low), frame.x(high), y0, y1, status_colour(status), tip))
            below += count
    return out
