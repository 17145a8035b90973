"""The spool of waiting commands: durable, ordered, private, never holding one twice."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import msgpack
import pytest

from agent.files import UnsafeFile
from agent.spool import Hold, Spool
from schemas import Command, encode


def command(number: int, event: str = "STARTCYCLE") -> Command:
    now = time.time()
    return Command(
        command_id=f"cmd-{number}",
        client_id="PC042",
        component="CCIM32",
        event=event,
        silent=True,
        issued_at=now,
        expires_at=now + 300,
        requested_by="tests",
    )


def test_entries_survive_a_restart_in_arrival_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    commands = [command(number) for number in range(12)]  # past 9: not a string sort
    for number, cmd in enumerate(commands):
        spool.add(cmd, received_at=1000.0 + number, deferred_at=2000.0, reason="lock: held")
    again = Spool(tmp_path / "spool")
    assert [e.command for e in again.pending()] == commands
    first = again.pending()[0]
    assert (first.received_at, first.deferred_at, first.reason) == (1000.0, 2000.0, "lock: held")


def test_a_command_is_not_spooled_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.add(command(1), 1.0, 2.0, "lock: held")
    second = spool.add(command(1), 5.0, 6.0, "process: dpkg")
    assert second == first
    assert len(spool) == 1 and "cmd-1" in spool
    assert len(list(tmp_path.glob("*.cmd"))) == 1
    assert len(Spool(tmp_path)) == 1


def test_removed_entries_stay_removed_and_numbers_are_not_reused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    one = spool.add(command(1), 1.0, 1.0, "r")
    spool.add(command(2), 1.0, 1.0, "r")
    spool.remove(one)
    spool.remove(one)  # twice is harmless
    again = Spool(tmp_path)
    assert [e.command_id for e in again.pending()] == ["cmd-2"]
    three = again.add(command(3), 1.0, 1.0, "r")
    assert three.sequence == 3
    assert [e.command_id for e in Spool(tmp_path).pending()] == ["cmd-2", "cmd-3"]


def test_a_torn_write_is_dropped_and_a_bad_file_is_kept_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add(command(1), 1.0, 1.0, "r")
    (tmp_path / ".000000000002-cmd-2.cmd.tmp").write_bytes(b"\x85half")  # crash mid-write
    (tmp_path / "000000000003-cmd-3.cmd").write_bytes(b"not msgpack \xc1")
    again = Spool(tmp_path)
    assert [e.command_id for e in again.pending()] == ["cmd-1"]
    assert not (tmp_path / ".000000000002-cmd-2.cmd.tmp").exists()
    assert (tmp_path / "000000000003-cmd-3.cmd.bad").exists()
    assert again.add(command(4), 1.0, 1.0, "r").sequence == 2


def test_without_a_directory_the_spool_is_in_memory() -> None:
    spool = Spool(None)
    entry = spool.add(command(1), 1.0, 1.0, "r")
    assert spool.get("cmd-1") == entry
    spool.remove(entry)
    assert len(spool) == 0


def test_an_entry_keeps_the_body_and_signature_headers_as_delivered(tmp_path: Path) -> None:
    cmd = command(1)
    body = msgpack.packb({**msgpack.unpackb(encode(cmd)), "v": [1, 9], "newer": "x" * 1000})
    headers = {"setevnt-signature": "c2ln", "setevnt-key-id": "0123456789abcdef"}
    Spool(tmp_path).add(cmd, 1.0, 2.0, "", body=body, headers=headers, hold=Hold.SCHEDULED)
    checked: list[tuple[bytes, object]] = []
    again = Spool(tmp_path, check=lambda b, h: checked.append((b, h)))  # type: ignore[func-returns-value]
    assert checked == [(body, headers)]  # what the signature covers, byte for byte
    (entry,) = again.pending()
    assert (entry.command, entry.hold) == (cmd, Hold.SCHEDULED)


def test_the_check_on_load_sets_refused_entries_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add(command(1), 1.0, 1.0, "r")
    spool.add(command(2), 1.0, 1.0, "r")
    refuse_two = lambda body, headers: "forged" if b"cmd-2" in body else None  # noqa: E731
    again = Spool(tmp_path, check=refuse_two)
    assert [e.command_id for e in again.pending()] == ["cmd-1"]
    assert [(r.entry.command_id, r.problem) for r in again.quarantined] == [("cmd-2", "forged")]
    assert (tmp_path / "000000000002-cmd-2.cmd.bad").exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes and owners")
def test_the_spool_is_private_and_refused_when_others_could_write_it(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "spool"
    spool = Spool(directory)
    spool.add(command(1), 1.0, 1.0, "r")
    (path,) = directory.iterdir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    path.chmod(0o666)
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        Spool(directory)
    path.chmod(0o600)
    directory.chmod(0o770)
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        Spool(directory)
    directory.chmod(0o700)
    if os.geteuid() == 0:  # root can hand a file to another user
        os.chown(path, 65534, 65534)
        with pytest.raises(UnsafeFile, match="belongs to uid 65534"):
            Spool(directory)
        os.chown(path, 0, 0)
    planted = directory / "000000000009-cmd-9.cmd"
    planted.symlink_to(path)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        Spool(directory)
