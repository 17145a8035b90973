"""Fixtures shared by the unit tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger, StormRecord


@pytest.fixture
def ledger(store_db: DbSettings) -> Iterator[Ledger]:
    """A temporary ledger (on each engine) holding one running storm, ``storm-t``, with no
    commands yet."""
    with Ledger(store_db) as opened:
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
