"""The completed-commands journal: what survives a restart, a torn write and compaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.journal import Journal


def test_record_then_get(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.get("cmd-1") is None
    journal.record("cmd-1", b"\x81\xa1t\xa3ack")
    journal.record("cmd-2", b"")
    assert journal.get("cmd-1") == b"\x81\xa1t\xa3ack"
    assert journal.get("cmd-2") == b""
    assert journal.get("cmd-3") is None
    assert len(journal) == 2


def test_entries_persist_for_a_second_journal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal"  # the directory is created
    first = Journal(path)
    first.record("cmd-1", b"ack-1")
    first.record("cmd-2", b"ack-2")
    first.record("cmd-1", b"ack-1-again")  # the newest ack for an id wins

    second = Journal(path)
    assert second.get("cmd-1") == b"ack-1-again"
    assert second.get("cmd-2") == b"ack-2"
    assert len(second) == 2


@pytest.mark.parametrize(
    "torn",
    [
        b"cmd-3 82a1",  # cut short mid-hex but still even-length hex, with no newline
        b"cmd-3 8",  # odd-length hex
        b"cmd-3",  # no ack at all
        b"cmd-3 zz\n",  # not hex, even though the line is complete
        b"\xff\xfe garbage",
    ],
)
def test_a_torn_line_is_skipped_and_good_entries_survive(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "journal"
    first = Journal(path)
    first.record("cmd-1", b"ack-1")
    first.record("cmd-2", b"ack-2")
    with open(path, "ab") as out:
        out.write(torn)

    second = Journal(path)
    assert second.get("cmd-1") == b"ack-1"
    assert second.get("cmd-2") == b"ack-2"
    assert second.get("cmd-3") is None
    assert len(second) == 2

    # What is recorded after the crash must not be glued onto the torn line and lost.
    second.record("cmd-4", b"ack-4")
    third = Journal(path)
    assert third.get("cmd-4") == b"ack-4"
    assert third.get("cmd-3") is None
    assert len(third) == 3


def test_compaction_keeps_the_newest_entries(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = Journal(path, keep=5)
    for n in range(20):
        journal.record(f"cmd-{n}", f"ack-{n}".encode())
        assert len(path.read_text().splitlines()) <= 10

    newest = [f"cmd-{n}" for n in range(15, 20)]
    assert len(journal) == 5
    assert [journal.get(c) for c in newest] == [f"ack-{n}".encode() for n in range(15, 20)]
    assert all(journal.get(f"cmd-{n}") is None for n in range(15))

    reloaded = Journal(path, keep=5)
    assert len(reloaded) == 5
    assert all(reloaded.get(c) is not None for c in newest)
    assert all(reloaded.get(f"cmd-{n}") is None for n in range(15))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]  # no temporary left


def test_compaction_rewrites_the_file_to_keep_entries(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = Journal(path, keep=5)
    for n in range(11):  # the 11th line passes 2 x keep: compact to the newest 5
        journal.record(f"cmd-{n}", b"ack")
    assert [line.split()[0] for line in path.read_text().splitlines()] == [
        f"cmd-{n}" for n in range(6, 11)
    ]


def test_in_memory_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    journal = Journal(None, keep=2)
    journal.record("cmd-1", b"ack-1")
    journal.record("cmd-2", b"ack-2")
    assert journal.get("cmd-1") == b"ack-1"
    journal.record("cmd-3", b"ack-3")
    assert journal.get("cmd-1") is None  # keep applies in memory too
    assert journal.get("cmd-3") == b"ack-3"
    assert len(journal) == 2
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere
