"""How fast the SQLite ledger takes a storm's writes, and what a command costs on disk.

The three writes a command costs in a storm, through the ledger's own calls and in the
batches the dispatcher uses: planned rows inserted when the storm starts
(``create_storm``), a "sent" mark per confirm (``apply``, by row, 1,250 a transaction),
a final answer per ack (``record_answers``, 500 a transaction).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger, SentMark, Writes
from dispatcher.store.ledger_rows import CommandRecord, Status, StormRecord, StormState
from schemas.messages import Ack

MARKS_PER_TRANSACTION = 1_250
ACKS_PER_TRANSACTION = 500


def ledger_rates(commands: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="setevnt-ledger-rates-") as directory:
        path = Path(directory) / "ledger.db"
        with Ledger(DbSettings(str(path))) as ledger:
            figures = _storm_writes(ledger, commands)
        # Closing the last connection checkpoints the write-ahead log into the file.
        size = sum(p.stat().st_size for p in Path(directory).iterdir())
        figures["bytes_per_command"] = round(size / commands)
        return figures


def _storm_writes(ledger: Ledger, commands: int) -> dict[str, Any]:
    now = time.time()
    storm_id = f"storm-capacity-{uuid.uuid4().hex[:6]}"
    records = [
        CommandRecord(uuid.uuid4().hex, storm_id, f"PC{n:07d}", "CCIM32", "STARTCYCLE", "planned")
        for n in range(commands)
    ]
    started = time.perf_counter()
    ledger.create_storm(_storm(storm_id, commands, now), records)
    planned = time.perf_counter() - started

    rows = ledger.rows_of(storm_id)
    marks = [SentMark(Status.SENT, now, now + 3600, now, r.command_id) for r in records]
    started = time.perf_counter()
    for first in range(0, commands, MARKS_PER_TRANSACTION):
        writes = Writes(sent=marks[first : first + MARKS_PER_TRANSACTION], publishing_at=now)
        ledger.apply(writes, storm_id, now, rows)
    sent = time.perf_counter() - started

    acks = [
        (Ack(r.command_id, r.client_id, "done", now + 1, "1.0.0", component="CCIM32",
             event="STARTCYCLE", issued_at=now), now + 1.5)
        for r in records
    ]  # fmt: skip
    started = time.perf_counter()
    for first in range(0, commands, ACKS_PER_TRANSACTION):
        ledger.record_answers(acks[first : first + ACKS_PER_TRANSACTION])
    answered = time.perf_counter() - started
    return {
        "commands": commands,
        "planned_per_s": round(commands / planned),
        "sent_marks_per_s": round(commands / sent),
        "answers_per_s": round(commands / answered),
    }


def _storm(storm_id: str, targets: int, now: float) -> StormRecord:
    return StormRecord(
        storm_id=storm_id, component="CCIM32", event="STARTCYCLE", options={},
        targets=targets, state=StormState.RUNNING, reason=None, requested_by="capacity",
        created_at=now, finished_at=None, heartbeat_at=now, owner="capacity",
        cancel_requested=False,
    )  # fmt: skip
