"""Tests read the simulated backend's records while agents are still appending."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.helpers import records


def test_a_line_still_being_written_is_not_read_as_a_record(tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    whole = json.dumps({"phase": "start", "command_id": "a"})
    half = json.dumps({"phase": "finish", "command_id": "a"})[:20]
    record.write_text(whole + "\n" + half)
    assert records(record) == [{"phase": "start", "command_id": "a"}]

    record.write_text(whole + "\n" + json.dumps({"phase": "finish", "command_id": "a"}) + "\n")
    assert [r["phase"] for r in records(record)] == ["start", "finish"]


def test_no_file_yet_is_no_records(tmp_path: Path) -> None:
    assert records(tmp_path / "absent.jsonl") == []
