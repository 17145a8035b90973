"""Fixtures shared by the unit tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger, StormRecord


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A temporary ledger holding one running storm, ``storm-t``, with no commands yet."""
    with Ledger(DbSettings(str(tmp_path / "db"))) as opened:
        now = time.time()
        storm = StormRecord(
            "storm-t",
            "CCIM32",
            "STARTCYCLE",
            {},
            0,
            "running",
            None,
            "t",
            now,
            None,
            now,
            "t",
            False,
        )
        opened.create_storm(storm, [])
        yield opened
