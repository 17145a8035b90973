"""How a storm's run ends in the ledger: what stays planned for a resume."""

from __future__ import annotations

import time

import pytest

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from dispatcher.storms import storm as storms


def planned_storm(ledger: Ledger, storm_id: str) -> None:
    now = time.time()
    record = StormRecord(
        storm_id, "CCIM32", "STARTCYCLE", {}, 2, "running", None, "ops", now, None, now,
        "pid 1 on elsewhere", False,
    )  # fmt: skip
    ledger.create_storm(
        record,
        [
            CommandRecord(f"{storm_id}-sent", storm_id, "PC1", "CCIM32", "STARTCYCLE", "sent"),
            CommandRecord(f"{storm_id}-left", storm_id, "PC2", "CCIM32", "STARTCYCLE", "planned"),
        ],
    )


@pytest.mark.parametrize(
    ("state", "left", "resumable"),
    [
        ("interrupted", "planned", True),  # its service stopped: the next one resumes it
        ("failed", "planned", True),  # the broker failed it: `resume` sends the rest
        ("cancelled", "cancelled", False),
        ("halted", "cancelled", False),
    ],
)
def test_only_a_resumable_end_keeps_unsent_commands_planned(
    store_db: DbSettings, state: str, left: str, resumable: bool
) -> None:
    with Ledger(store_db) as ledger:
        planned_storm(ledger, "s")
        ledger.finish_storm("s", state, "why", time.time())
        command = ledger.command("s-left")
        assert command is not None and command.status == left
        record = ledger.storm("s")
        assert record is not None
        assert (storms.resumable(record) is None) == resumable
