"""What the hostile suite looks at before and after a batch, and what it requires.

A :class:`Snapshot` holds what a batch must leave as it was: consumers on the queues,
the processes, the metric series of ``serve``'s /metrics, the ledger's row counts, the
commands counted published. :func:`problems` compares two snapshots with what the
batch and the genuine traffic after it were allowed to add, and says what broke.

Metric series must not grow with what a message says. Labels take values from closed
sets (the catalog, the schema's enums); a batch may bring out values of those sets
not seen yet (the first ``rejected`` outcome, the first ``bad-msgpack``), and at most
:data:`NEW_NAMES` other fixed names per label (a drop reason a fix may add), never
values a peer chose.
"""

from __future__ import annotations

import sqlite3
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dispatcher.service.ledger_metrics import IN_FLIGHT, STORM_STATES
from dispatcher.service.metrics import PROBE_CLASSES
from dispatcher.store.ledger_rows import Status
from schemas.catalog import DEFAULT_CATALOG
from schemas.messages import AckStatus, Kind, Reason, RefusalReason, ReplyStatus

NEW_NAMES = 3
_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")
_NOT_VALUES = ("le", "quantile")

Series = frozenset[tuple[str, tuple[tuple[str, str], ...]]]


def closed_vocabulary() -> frozenset[str]:
    names = {c.name for c in DEFAULT_CATALOG}
    names |= {event for c in DEFAULT_CATALOG for event in c.events}
    for enum in (AckStatus, Status, Reason, RefusalReason, ReplyStatus, Kind):
        names |= {member.value for member in enum}
    names |= set(PROBE_CLASSES) | set(STORM_STATES) | set(IN_FLIGHT)
    names |= {"sent", "unroutable", "nacked", "collector", "publisher", "accepted"}
    names |= {"replayed", "online", "offline", "none", "unknown", "other"}
    names |= {"missing-user-id", "wrong-user-id"}
    return frozenset(names)


CLOSED = closed_vocabulary()


@dataclass(frozen=True, slots=True)
class Snapshot:
    consumers: Mapping[str, int]  # queue -> consumers (-1: the queue is gone)
    alive: Mapping[str, bool]  # process -> running
    series: Series
    commands: int  # ledger rows
    storms: int
    published: float  # setevnt_commands_published_total, every label set summed
    rss_kb: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a batch and the genuine traffic after it may add to the ledger and counts."""

    commands: int = 0
    storms: int = 0
    published: int = 0

    def __add__(self, other: Allowance) -> Allowance:
        return Allowance(
            self.commands + other.commands,
            self.storms + other.storms,
            self.published + other.published,
        )


# -- reading ------------------------------------------------------------------------------


def read_series(metrics_url: str) -> tuple[Series, float]:
    """Every sample of the page (name and labels), and the commands counted published."""
    with urllib.request.urlopen(metrics_url, timeout=30) as page:
        text = page.read().decode()
    samples = set()
    published = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.add((sample.name, tuple(sorted(sample.labels.items()))))
            if sample.name == "setevnt_commands_published_total":
                published += sample.value
    return frozenset(samples), published


def ledger_rows(database: Path) -> tuple[int, int]:
    """(commands, storms) rows in the dispatcher's database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        (commands,) = db.execute("SELECT count(*) FROM commands").fetchone()
        (storms,) = db.execute("SELECT count(*) FROM storms").fetchone()
    return int(commands), int(storms)


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- judging ------------------------------------------------------------------------------


def label_values(series: Iterable[tuple[str, tuple[tuple[str, str], ...]]]) -> dict[str, set[str]]:
    """``family{label}`` -> the values it takes."""
    values: defaultdict[str, set[str]] = defaultdict(set)
    for name, labels in series:
        family = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
        for label, value in labels:
            if label not in _NOT_VALUES:
                values[f"{family}{{{label}}}"].add(value)
    return values


def foreign_values(before: Series, after: Series) -> dict[str, set[str]]:
    """Per ``family{label}``, the values new since ``before`` that no closed set holds."""
    old = label_values(before)
    found = {}
    for key, values in label_values(after).items():
        foreign = {v for v in values - old.get(key, set()) if v not in CLOSED}
        if foreign:
            found[key] = foreign
    return found


def problems(before: Snapshot, after: Snapshot, allowed: Allowance) -> list[str]:
    """What the batch broke, in words (empty: nothing)."""
    found = [f"{queue}: no consumer left" for queue, n in after.consumers.items() if n < 1]
    found += [f"{name} is not running" for name, alive in after.alive.items() if not alive]
    for key, values in sorted(foreign_values(before.series, after.series).items()):
        if len(values) > NEW_NAMES:
            shown = ", ".join(sorted(values)[:5])
            found.append(f"metric label {key} took {len(values)} values from messages ({shown})")
    grown = len(after.series) - len(before.series)
    if any("metric label" in p for p in found):
        found.append(f"metric series grew by {grown} ({len(before.series)} -> {len(after.series)})")
    for what, old, new, may in (
        ("commands", before.commands, after.commands, allowed.commands),
        ("storms", before.storms, after.storms, allowed.storms),
    ):
        if new - old != may:
            found.append(
                f"ledger {what}: {old} -> {new} rows, +{new - old} where requests that were "
                f"accepted and the genuine traffic account for +{may}"
            )
    counted = after.published - before.published
    if counted > allowed.published:
        found.append(
            f"setevnt_commands_published_total rose by {counted:g}; dispatchers published "
            f"at most {allowed.published}"
        )
    return found
