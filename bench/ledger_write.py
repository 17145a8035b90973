#!/usr/bin/env python3
"""Ledger write throughput, SQLite against PostgreSQL, in one run.

What a storm and the collectors write, through the store as they write it: a storm's
planned rows (one transaction, ``create_storm``), the storm writer's ``sent`` marks and
the collector's acks in batches of 500, and acks from several collectors at once (each its
own connection and answer numbering). SQLite is a file in a temporary directory;
PostgreSQL a scratch database on 127.0.0.1:5432 (``$SETEVNT_BENCH_POSTGRES``), dropped
afterwards. Prints one JSON line, then one line per figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, SentMark, StormRecord, Writes
from schemas.messages import Ack

ROWS = int(os.environ.get("BENCH_ROWS", "20000"))
BATCH = 500
WRITERS = 4
SERVER = os.environ.get("SETEVNT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def sqlite_database() -> Iterator[DbSettings]:
    with tempfile.TemporaryDirectory() as tmp:
        yield DbSettings(f"{tmp}/setevnt.db")


@contextlib.contextmanager
def postgres_database() -> Iterator[DbSettings]:
    import psycopg  # the bench makes its scratch database; the store never creates one

    name = f"setevnt_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield DbSettings(f"{SERVER}/{name}")
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def storm_rows(storm_id: str, rows: int) -> tuple[StormRecord, list[CommandRecord]]:
    """A running storm of ``rows`` planned commands, as ``create_storm`` takes it."""
    now = time.time()
    storm = StormRecord(
        storm_id, "CCIM32", "STARTCYCLE", {"rate": 1000}, rows, "running", None, "bench",
        now, None, now, f"pid {os.getpid()} on bench", False,
    )  # fmt: skip
    commands = [
        CommandRecord(f"{storm_id}-{n}", storm_id, f"PC{n:06d}", "CCIM32", "STARTCYCLE", "planned")
        for n in range(rows)
    ]
    return storm, commands


def sent_marks(commands: list[CommandRecord]) -> list[SentMark]:
    now = time.time()
    return [SentMark("sent", now, now + 600, now, c.command_id) for c in commands]


def _acks(commands: list[CommandRecord]) -> list[tuple[Ack, float]]:
    now = time.time()
    return [
        (Ack(c.command_id, c.client_id, "done", now, "bench", issued_at=now - 1), now)
        for c in commands
    ]


def _rate(rows: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return rows / (time.perf_counter() - started)


def _batches(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def storm_writes(
    ledger: Ledger, rows: int, *, marks_batch: int = BATCH, acks_batch: int = BATCH
) -> dict[str, float]:
    """The three writes a command costs in a storm, rows per second: planned (one
    transaction), ``sent`` marks and acks in batches of the given sizes."""
    storm, commands = storm_rows(f"bench-{uuid.uuid4().hex[:8]}", rows)
    planned = _rate(rows, lambda: ledger.create_storm(storm, commands))
    known = ledger.rows_of(storm.storm_id)
    marks = sent_marks(commands)

    def mark() -> None:
        for batch in _batches(marks, marks_batch):
            ledger.apply(Writes(sent=batch), storm.storm_id, time.time(), known)

    sent = _rate(rows, mark)

    def answer() -> None:
        for batch in _batches(_acks(commands), acks_batch):
            ledger.record_answers(batch)

    acked = _rate(rows, answer)
    return {"planned_rows_per_s": planned, "sent_marks_per_s": sent, "acks_per_s": acked}


def measure(settings: DbSettings) -> dict[str, float]:
    with Ledger(settings) as ledger:
        rates = storm_writes(ledger, ROWS)
        _storm, commands = storm_rows("bench-many", ROWS)
        ledger.create_storm(_storm, commands)
    rates["acks_per_s_from_4_writers"] = _concurrent_acks(settings, commands)
    return {figure: round(rate) for figure, rate in rates.items()}


def _concurrent_acks(settings: DbSettings, commands: list[CommandRecord]) -> float:
    """Acks per second from several collectors writing at once, each its share."""
    errors: list[BaseException] = []

    def write(share: list[CommandRecord]) -> None:
        try:
            with Ledger(settings) as ledger:
                for batch in _batches(_acks(share)):
                    ledger.record_answers(batch)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(commands[n::WRITERS],)) for n in range(WRITERS)]

    def run() -> None:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    rate = _rate(len(commands), run)
    if errors:
        raise errors[0]
    return rate


def main() -> int:
    with sqlite_database() as settings:
        sqlite = measure(settings)
    try:
        with postgres_database() as settings:
            postgres: dict[str, float] | None = measure(settings)
    except ImportError as exc:
        print(f"ledger_write: PostgreSQL skipped: {exc}", file=sys.stderr)
        postgres = None
    print(
        json.dumps(
            {
                "bench": "ledger_write",
                "rows": ROWS,
                "batch": BATCH,
                "sqlite": sqlite,
                "postgresql": postgres,
            }
        )
    )
    for figure in sqlite:
        other = f"{postgres[figure]:>9,.0f}" if postgres else "        -"
        print(f"{figure:<28} sqlite {sqlite[figure]:>9,.0f}   postgresql {other}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
