"""The completed-commands journal: what survives a restart, a torn write, compaction and time."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from agent import journal as journal_module
from agent.files import UnsafeFile
from agent.journal import PRUNE_EVERY, RETAIN, Journal
from schemas import Ack, encode

LATER = time.time() + 600  # a command expiring in ten minutes


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def ack(command_id: str, issued_at: float | None = None) -> bytes:
    return encode(
        Ack(
            command_id=command_id,
            client_id="PC042",
            status="done",
            received_at=time.time(),
            agent_version="0.1.0",
            issued_at=time.time() if issued_at is None else issued_at,
        )
    )


def test_record_then_get(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.get("cmd-1") is None
    journal.record("cmd-1", b"\x81\xa1t\xa3ack", LATER)
    journal.record("cmd-2", b"", LATER)
    assert journal.get("cmd-1") == b"\x81\xa1t\xa3ack"
    assert journal.get("cmd-2") == b""
    assert journal.get("cmd-3") is None
    assert len(journal) == 2


def test_entries_persist_for_a_second_journal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal"  # the directory is created
    first = Journal(path)
    first.record("cmd-1", b"ack-1", LATER)
    first.record("cmd-2", b"ack-2", LATER)
    first.record("cmd-1", b"ack-1-again", LATER)  # the newest ack for an id wins

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
        b"cmd-3 82a1 soon\n",  # an expiry that is not a number
        b"cmd-3 82a1 nan\n",  # one that would never pass
        b"\xff\xfe garbage",
    ],
)
def test_a_torn_line_is_skipped_and_good_entries_survive(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "journal"
    first = Journal(path)
    first.record("cmd-1", b"ack-1", LATER)
    first.record("cmd-2", b"ack-2", LATER)
    with open(path, "ab") as out:
        out.write(torn)

    second = Journal(path)
    assert second.get("cmd-1") == b"ack-1"
    assert second.get("cmd-2") == b"ack-2"
    assert second.get("cmd-3") is None
    assert len(second) == 2

    # What is recorded after the crash must not be glued onto the torn line and lost.
    second.record("cmd-4", b"ack-4", LATER)
    third = Journal(path)
    assert third.get("cmd-4") == b"ack-4"
    assert third.get("cmd-3") is None
    assert len(third) == 3


def test_an_unexpired_entry_is_never_forgotten_however_many_commands_follow(
    tmp_path: Path,
) -> None:
    """Evicting by count made a signed command runnable again after 10,000 newer ones."""
    path = tmp_path / "journal"
    count = 10_050
    with open(path, "w", encoding="ascii") as out:  # as written by the earlier release
        body = ack("x").hex()
        out.writelines(f"cmd-{n} {body}\n" for n in range(count))
    journal = Journal(path)
    assert len(journal) == count
    assert journal.get("cmd-0") is not None
    for n in range(count, count + 3):
        journal.record(f"cmd-{n}", b"ack", LATER)
    assert Journal(path).get("cmd-0") is not None


def test_expired_entries_are_dropped_at_load_and_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_SLACK", 5)
    clock = Clock()
    path = tmp_path / "journal"
    journal = Journal(path, clock=clock)
    start = clock.now
    for n in range(10):
        journal.record(f"old-{n}", b"old", start + 60)
    journal.record("new", b"new", start + 7200)

    clock.now = start + 61 + RETAIN  # the old commands expired over an hour ago
    reloaded = Journal(path, clock=clock)
    assert [reloaded.get(f"old-{n}") for n in range(10)] == [None] * 10
    assert reloaded.get("new") == b"new"

    assert len(path.read_text().splitlines()) == 11  # the file is rewritten later
    reloaded.record("more", b"m", clock.now + 60)  # 12 lines for 2 entries: compacted
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["new", "more"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]  # no temporary left


def test_lines_of_the_earlier_release_expire_a_lifetime_after_their_command(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "journal"
    issued = clock.now - 3600
    path.write_text(f"recent {ack('recent', issued).hex()}\nodd {b'not an ack'.hex()}\n")
    journal = Journal(path, max_lifetime=7200, clock=clock)
    assert journal.get("recent") is not None and journal.get("odd") == b"not an ack"

    clock.now = issued + 7201 + RETAIN  # past the longest the recent one could have lived
    again = Journal(path, max_lifetime=7200, clock=clock)
    assert again.get("recent") is None
    assert again.get("odd") is not None  # unreadable: kept a lifetime from when it was seen


def test_in_memory_journal_keeps_entries_until_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = Clock()
    journal = Journal(None, clock=clock)
    journal.record("cmd-1", b"ack-1", clock.now + 10)
    journal.record("cmd-2", b"ack-2", clock.now + 10_000)
    clock.now += 10 + RETAIN + PRUNE_EVERY
    journal.record("cmd-3", b"ack-3", clock.now + 10)
    assert journal.get("cmd-1") is None  # dropped once expired
    assert journal.get("cmd-2") == b"ack-2"
    assert journal.get("cmd-3") == b"ack-3"
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes and owners")
def test_the_journal_is_private_and_refused_when_others_could_write_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal"
    Journal(path).record("cmd-1", b"ack", LATER)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    path.chmod(0o622)
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        Journal(path)
    path.chmod(0o600)
    path.parent.chmod(0o777)
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        Journal(path)
    path.parent.chmod(0o700)

    planted = tmp_path / "elsewhere"
    planted.write_text("")
    link = tmp_path / "state" / "linked"
    link.symlink_to(planted)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        Journal(link)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root to hand a file to another user",
)
def test_a_journal_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    Journal(path).record("cmd-1", b"ack", LATER)
    os.chown(path, 65534, 65534)
    with pytest.raises(UnsafeFile, match="belongs to uid 65534"):
        Journal(path)
