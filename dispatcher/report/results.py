"""What each client answered to a storm, and why: rows for ``results`` and ``--retry-from``.

One row per client: its command's status, the agent's reason and detail, the
component's exit code and the end of its output, and the trigger latency. A table for
people (agents' text cut to one printable line), or JSON lines (``--json``) that carry
every field whole. ``--status failed,expired`` keeps only those statuses; ``pending``
stands for ``sent``, ``pending-offline`` and ``waiting-node``. A command still pending
past its expiry is ``expired``: the broker dropped it unanswered. ``storm --retry-from``
targets the clients these rows name.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.report import tables
from dispatcher.report.charts import latency_text, status_order
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import ClientResult, Ledger, Status, StormRecord

ALIASES = {
    "pending": frozenset(
        {Status.SENT.value, Status.PENDING_OFFLINE.value, Status.WAITING_NODE.value}
    )
}
STATUS_WORDS = (*(s.value for s in Status), *ALIASES)
RETRY_DEFAULT = frozenset({Status.FAILED.value, Status.EXPIRED.value})
DETAIL_SHOWN = 100  # characters of a detail in the table; --json has it whole
OUTPUT_SHOWN = 80  # the last characters of the output in the table


def parse_statuses(text: str) -> frozenset[str]:
    """``failed,expired`` -> those statuses; ``pending`` stands for its two."""
    chosen: set[str] = set()
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word in ALIASES:
            chosen |= ALIASES[word]
        elif word in STATUS_WORDS:
            chosen.add(word)
        else:
            raise ValueError(f"{word[:40]!r} is not a status (one of {', '.join(STATUS_WORDS)})")
    if not chosen:
        raise ValueError("give at least one status, e.g. failed,expired")
    return frozenset(chosen)


def read(
    ledger: Ledger, ident: str, statuses: frozenset[str] | None, now: float
) -> Iterator[ClientResult]:
    """The rows of a storm, or of one command, with only ``statuses`` when given."""
    if ledger.storm(ident) is not None:
        return ledger.results(ident, now, statuses)
    found = ledger.result(ident, now)
    if found is None:
        raise ValueError(f"no storm or command {ident} in the ledger")
    return iter([found] if statuses is None or found.status in statuses else [])


# -- what a row says -------------------------------------------------------------------


def ntstatus_hex(code: int | None) -> str | None:
    """A Windows NTSTATUS as it is written (0xC0000005), for an exit code that looks like
    one: a negative 32-bit int, or the same 32 bits read unsigned. A small negative one
    (down to -65535) is not: that is how Python reports a POSIX signal (-11: SIGSEGV)."""
    if code is None:
        return None
    if -(2**31) <= code <= -(2**16) or 2**31 <= code <= 2**32 - 2**16:
        return f"0x{code & 0xFFFFFFFF:08X}"
    return None


def exit_code_text(code: int | None) -> str:
    if code is None:
        return "-"
    shown = ntstatus_hex(code)
    return f"{code} ({shown})" if shown else str(code)


def why(row: ClientResult) -> str | None:
    """The detail, or what the ledger knows when no answer came."""
    if row.lapsed:
        return f"no answer before it expired (the ledger has it {row.recorded_status})"
    return row.detail


def as_json(row: ClientResult) -> dict[str, Any]:
    event = f"{row.component}_{row.event}" if row.component and row.event else None
    return {
        "client": row.client_id,
        "command_id": row.command_id,
        "storm_id": row.storm_id,
        "event": event,
        "status": row.status,
        "recorded_status": row.recorded_status,
        "reason": row.reason,
        "detail": why(row),
        "exit_code": row.exit_code,
        "exit_code_hex": ntstatus_hex(row.exit_code),
        "output": row.output,
        "latency_s": round(row.latency, 4) if row.latency is not None else None,
        "acked_at": row.acked_at,
    }


def table(rows: Sequence[ClientResult], width: int | None = None) -> list[str]:
    if not rows:
        return ["no command matches"]
    headers = ("CLIENT", "STATUS", "REASON", "EXIT", "LATENCY", "DETAIL | OUTPUT (its end)")
    cells = [
        (
            tables.one_line(row.client_id, 64),
            tables.one_line(row.status, 20),
            tables.one_line(row.reason, 24),
            exit_code_text(row.exit_code),
            latency_text(row.latency),
            _said(row),
        )
        for row in rows
    ]
    return [*tables.layout(headers, cells, width), summary(Counter(r.status for r in rows))]


def _said(row: ClientResult) -> str:
    detail = tables.one_line(why(row), DETAIL_SHOWN)
    if not row.output:
        return detail
    return f"{detail} | {tables.tail_line(row.output, OUTPUT_SHOWN)}"


def summary(counts: Counter[str]) -> str:
    """``3 done, 1 failed, 1 timeout of 5``: successes first, as the report orders them."""
    parts = ", ".join(f"{counts[status]} {status}" for status in status_order(list(counts)))
    return f"{parts} of {sum(counts.values())}"


# -- storm --retry-from ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """A storm's clients to send an event again, chosen by what became of their commands."""

    storm: StormRecord
    clients: list[str]


def retry_plan(database: DbSettings, storm_id: str, statuses: frozenset[str]) -> Retry:
    with Ledger(database, create=False) as ledger:
        storm = ledger.storm(storm_id)
        if storm is None:
            raise ValueError(f"--retry-from: no storm {storm_id} in {database}")
        clients = sorted({r.client_id for r in ledger.results(storm_id, time.time(), statuses)})
    if not clients:
        listed = ", ".join(sorted(statuses))
        raise ValueError(f"--retry-from: no client of storm {storm_id} is {listed}")
    return Retry(storm, clients)


def rejections(ledger: Ledger, storm_id: str) -> str | None:
    """Why agents refused the storm's command, e.g. "5 client(s) rejected the command:
    bad-signature": an unsigned storm must not read as a mere count of failures."""
    counts = ledger.reasons(storm_id, time.time(), {Status.REJECTED})
    total = sum(c.commands for c in counts)
    if not total:
        return None
    if len(counts) == 1:
        why = counts[0].reason or "no reason given"
    else:
        why = ", ".join(f"{c.reason or 'no reason given'} ({c.commands})" for c in counts)
    return f"{total} client(s) rejected the command: {why}"
