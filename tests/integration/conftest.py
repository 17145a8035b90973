"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import Fleet


@pytest.fixture
def fleet(amqp_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Dispatcher and simulator processes in the test's vhost, all stopped afterwards."""
    running = Fleet(amqp_url, tmp_path)
    try:
        yield running
    finally:
        running.stop()
