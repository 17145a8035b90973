"""The fault suite's scoreboard: sent, confirmed, acked, lost, duplicate executions.

Every number is computed from what the system itself wrote down, never from what a test
expects: the storm's ledger (what was planned, what the broker confirmed), the ack
stream (what the agents answered, read from a durable tap queue or the ledger the
collector fills) and the simulated backend's record files (what actually ran, and how
often). Each fault test prints its table with :meth:`Tally.show` and asserts on it.

    lost                  sent commands without a final ack
    duplicate executions  runs beyond the first of one command id (the backend's record
                          shows it finished more than once)
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.store.ledger_rows import ACK_FINAL
from tests.integration.helpers import records

COLUMNS = ("sent", "confirmed", "acked", "lost", "duplicate executions")


@dataclass(frozen=True)
class Tally:
    title: str
    sent: int
    confirmed: int
    acked: int
    lost: int
    duplicate_executions: int
    executed: int  # distinct sent commands whose run finished at least once
    interrupted: int  # runs that started and never finished (e.g. a killed agent)
    duplicate_acks: int  # final acks beyond the first per command (at-least-once: fine)
    statuses: Mapping[str, int]  # final ack status -> commands
    lost_ids: tuple[str, ...] = ()
    twice: Mapping[str, int] = field(default_factory=dict)  # command id -> finished runs
    notes: Mapping[str, str] = field(default_factory=dict)

    def table(self) -> str:
        values = (self.sent, self.confirmed, self.acked, self.lost, self.duplicate_executions)
        widths = [
            max(len(name), len(str(value))) for name, value in zip(COLUMNS, values, strict=True)
        ]
        rule = "+".join("-" * (w + 2) for w in widths)
        head = "|".join(f" {name:>{w}} " for name, w in zip(COLUMNS, widths, strict=True))
        row = "|".join(f" {value:>{w}} " for value, w in zip(values, widths, strict=True))
        lines = [f"== {self.title}", rule, head, rule, row, rule]
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items())) or "none"
        lines.append(
            f"   executed {self.executed}, interrupted runs {self.interrupted}, "
            f"duplicate acks {self.duplicate_acks}; final statuses: {statuses}"
        )
        lines += [f"   {name}: {value}" for name, value in self.notes.items()]
        if self.lost_ids:
            lines.append(f"   lost: {', '.join(self.lost_ids[:10])}")
        if self.twice:
            shown = ", ".join(f"{c} x{n}" for c, n in list(self.twice.items())[:10])
            lines.append(f"   ran more than once: {shown}")
        return "\n".join(lines)

    def show(self) -> Tally:
        print("\n" + self.table(), flush=True)
        return self

    def with_notes(self, **notes: object) -> Tally:
        merged = {**self.notes, **{k.replace("_", " "): str(v) for k, v in notes.items()}}
        return dataclasses.replace(self, notes=merged)


def tally(
    title: str,
    *,
    sent: Collection[str],
    confirmed: Collection[str],
    acked: Mapping[str, str],
    runs: Iterable[Mapping[str, Any]] = (),
    duplicate_acks: int = 0,
) -> Tally:
    """Compute the table.

    ``sent``: ids of the commands the test (or storm) set out to send; ``confirmed``: those
    the broker confirmed; ``acked``: command id -> final status from the ack stream or the
    ledger; ``runs``: the simulated backend's record entries (``start``/``finish`` lines).
    """
    wanted = set(sent)
    finished = Counter(r["command_id"] for r in runs if r["phase"] == "finish")
    started = Counter(r["command_id"] for r in runs if r["phase"] == "start")
    answered = {c: s for c, s in acked.items() if c in wanted}
    lost = sorted(wanted - set(answered))
    twice = {c: n for c, n in sorted(finished.items()) if n > 1}
    return Tally(
        title=title,
        sent=len(wanted),
        confirmed=len(wanted & set(confirmed)),
        acked=len(answered),
        lost=len(lost),
        duplicate_executions=sum(n - 1 for n in twice.values()),
        executed=len(wanted & set(finished)),
        interrupted=sum(max(0, started[c] - finished[c]) for c in started),
        duplicate_acks=duplicate_acks,
        statuses=dict(Counter(answered.values())),
        lost_ids=tuple(lost),
        twice=twice,
    )


# -- where the numbers come from ----------------------------------------------------------


def final_acks(acks: Iterable[Any]) -> tuple[dict[str, str], int]:
    """Command id -> final status from a stream of :class:`schemas.messages.Ack`, and how
    many final acks repeated one already seen (an agent answering a redelivery again)."""
    statuses: dict[str, str] = {}
    repeats = 0
    for ack in acks:
        if not ack.final or not ack.command_id:
            continue
        if ack.command_id in statuses:
            repeats += 1
            continue
        statuses[ack.command_id] = ack.status
    return statuses, repeats


def run_records(*paths: Path) -> list[dict[str, Any]]:
    """Every ``start``/``finish`` entry of the simulated backend's record files."""
    return [entry for path in paths for entry in records(path)]


@dataclass(frozen=True)
class LedgerView:
    """One storm as its ledger has it."""

    planned: list[str]  # every command of the storm, in plan order
    confirmed: set[str]  # the broker confirmed it (sent_at written)
    statuses: dict[str, str]  # command id -> status in the ledger now
    sent_at: dict[str, float]  # command id -> when the broker confirmed it

    def finals(self) -> dict[str, str]:
        """Commands settled by their client's final ack."""
        return {c: s for c, s in self.statuses.items() if s in ACK_FINAL}


def ledger(db: Path, storm_id: str | None = None) -> LedgerView:
    """Read the ledger (read-only); without ``storm_id``, every command in it."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=15)) as conn:
        where, args = ("WHERE storm_id = ?", (storm_id,)) if storm_id else ("", ())
        rows = conn.execute(
            f"SELECT command_id, status, sent_at FROM commands {where} ORDER BY rowid", args
        ).fetchall()
    return LedgerView(
        planned=[r[0] for r in rows],
        confirmed={r[0] for r in rows if r[2] is not None},
        statuses={r[0]: r[1] for r in rows},
        sent_at={r[0]: r[2] for r in rows if r[2] is not None},
    )
