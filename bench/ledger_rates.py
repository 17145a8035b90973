"""What a command costs the SQLite ledger in a storm: write rates and bytes on disk.

The writes of :func:`bench.ledger_write.storm_writes` in the batches the dispatcher uses
(``sent`` marks 1,250 a transaction, acks 500), then the file's size per command.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.ledger_write import storm_writes
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger

MARKS_PER_TRANSACTION = 1_250
ACKS_PER_TRANSACTION = 500


def ledger_rates(commands: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="setevnt-ledger-rates-") as directory:
        path = Path(directory) / "ledger.db"
        with Ledger(DbSettings(str(path))) as ledger:
            rates = storm_writes(
                ledger,
                commands,
                marks_batch=MARKS_PER_TRANSACTION,
                acks_batch=ACKS_PER_TRANSACTION,
            )
        # Closing the last connection checkpoints the write-ahead log into the file.
        size = sum(p.stat().st_size for p in Path(directory).iterdir())
    return {
        "commands": commands,
        **{figure: round(rate) for figure, rate in rates.items()},
        "bytes_per_command": round(size / commands),
    }
