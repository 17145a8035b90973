"""The test helpers that read what child processes leave: records still being appended,
the output of a process that would not stop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import NotStopped, Process, records


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


def test_a_process_that_ignores_sigterm_is_reported_with_what_it_said() -> None:
    script = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('holding on', flush=True); time.sleep(60)"
    )
    process = Process([sys.executable, "-c", script])
    process.wait_line("holding on", timeout=30)
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        process.terminate(timeout=0.5)
    assert isinstance(raised.value, NotStopped)
    assert "after SIGTERM" in str(raised.value)
    assert "holding on" in str(raised.value)
    assert process.proc.poll() is not None, "killed once the wait ran out"
