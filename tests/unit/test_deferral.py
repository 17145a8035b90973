"""Deferral through the handler, with a real lock, spool and journal (no broker)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.backends.simulated import SimulatedBackend
from agent.config import DEFAULT_DISRUPTIVE, AgentConfig
from agent.deferral import Deferrals
from agent.guard import DistributionLock, Guard
from agent.handler import Delivery, Handler, Reply, Run
from agent.journal import Journal
from agent.spool import Entry, Spool
from schemas import Ack, Command, decode, encode

CLIENT = "PC042"


@dataclass
class Client:
    """One agent's handler, its files, and the distribution lock."""

    tmp: Path
    lock: DistributionLock
    allow_force: bool = False
    max_deferral: float = 3600.0

    def __post_init__(self) -> None:
        self._held: int | None = None
        self.handler = self.restart()

    def restart(self) -> Handler:
        """A fresh handler over the same files, as after an agent restart."""
        journal = Journal(self.tmp / "journal")
        guard = Guard([self.lock], DEFAULT_DISRUPTIVE, max_deferral=self.max_deferral)
        guard.prepare()
        deferrals = Deferrals(guard, Spool(self.tmp / "spool"), journal, CLIENT)
        backend = SimulatedBackend(duration=0.01, record=str(self.tmp / "record"))
        config = AgentConfig(client_id=CLIENT, allow_force=self.allow_force)
        self.handler = Handler(config, backend, journal, deferrals=deferrals)
        return self.handler

    @property
    def deferrals(self) -> Deferrals:
        assert self.handler.deferrals is not None
        return self.handler.deferrals

    def hold(self) -> None:
        self._held = self.lock.hold_shared()

    def end_hold(self) -> None:
        assert self._held is not None
        os.close(self._held)
        self._held = None

    def send(self, cmd: Command) -> Ack:
        """Admit and execute one delivery, as the daemon does; return the ack it publishes."""
        incoming = Delivery(encode(cmd), cmd.command_id, time.time(), time.monotonic())
        verdict = self.handler.admit(incoming)
        if isinstance(verdict, Reply):
            return decode(verdict.ack, Ack)
        assert isinstance(verdict, Run)
        return decode(self.handler.execute(verdict.command, incoming), Ack)

    def release(self, publish: bool = True) -> list[Ack]:
        """One release pass; with ``publish`` the entries are removed as the daemon does."""
        handed: list[tuple[Entry, bytes]] = []
        self.handler.release(lambda entry, ack: handed.append((entry, ack)) is None)
        if publish:
            for entry, _ack in handed:
                self.deferrals.spool.remove(entry)
        return [decode(ack, Ack) for _entry, ack in handed]

    def starts(self) -> list[str]:
        path = self.tmp / "record"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [line["command_id"] for line in lines if line["phase"] == "start"]

    def close(self) -> None:
        if self._held is not None:
            self.end_hold()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    made = Client(tmp_path, DistributionLock(tmp_path / "distribution.lock"))
    yield made
    made.close()


def command(number: int, event: str = "CCIM32_STARTCYCLE", **changes: object) -> Command:
    component, name = event.split("_", 1)
    now = time.time()
    fields: dict[str, object] = {
        "command_id": f"cmd-{number}",
        "client_id": CLIENT,
        "component": component,
        "event": name,
        "silent": True,
        "issued_at": now,
        "expires_at": now + 300,
        "requested_by": "tests",
    }
    fields.update(changes)
    return Command(**fields)  # type: ignore[arg-type]


def test_a_disruptive_command_waits_for_the_distribution(client: Client) -> None:
    client.hold()
    ack = client.send(command(1))
    assert (ack.status, ack.reason, ack.final) == ("deferred", "busy", False)
    assert ack.detail is not None and ack.detail.startswith("lock: ")
    assert str(client.lock.path) in ack.detail
    assert len(client.deferrals.spool) == 1
    assert client.send(command(2, "CQMGR32_STARTCYCLE")).status == "done"  # not disruptive
    assert client.starts() == ["cmd-2"]
    assert client.release() == []  # still held
    assert not client.deferrals.due()

    client.end_hold()
    assert client.deferrals.due()
    (done,) = client.release()
    assert (done.command_id, done.status) == ("cmd-1", "done")
    assert client.starts() == ["cmd-2", "cmd-1"]
    assert len(client.deferrals.spool) == 0


def test_a_redelivered_deferred_command_is_not_spooled_twice(client: Client) -> None:
    client.hold()
    first = client.send(command(1))
    again = client.send(command(1))  # a redelivery: admit answers from the spool
    assert again.status == "deferred" and again.detail == first.detail
    assert len(client.deferrals.spool) == 1
    client.restart()
    assert client.send(command(1)).status == "deferred"  # and after a restart
    assert len(client.deferrals.spool) == 1
    client.end_hold()
    assert [a.status for a in client.release()] == ["done"]
    assert client.starts() == ["cmd-1"]


def test_release_runs_in_arrival_order_and_coalesces_duplicates(client: Client) -> None:
    client.hold()
    sent = [
        command(1, "CCIM32_STARTCYCLE"),
        command(2, "CCIM32_CLOSE"),
        command(3, "CCIM32_STARTCYCLE"),
        command(4, "CCIM32_STARTCYCLE"),
    ]
    assert {client.send(c).status for c in sent} == {"deferred"}
    time.sleep(0.2)
    client.end_hold()
    acks = client.release()
    assert [(a.command_id, a.status) for a in acks] == [
        ("cmd-1", "done"),
        ("cmd-2", "done"),
        ("cmd-3", "coalesced"),
        ("cmd-4", "coalesced"),
    ]
    assert client.starts() == ["cmd-1", "cmd-2"]
    assert acks[2].reason == "coalesced" and acks[2].detail is not None
    assert "cmd-1" in acks[2].detail
    assert all(a.wait_seconds is not None and a.wait_seconds >= 0.2 for a in acks)
    for ack in acks:  # final acks are journalled: a redelivery gets the same answer
        assert client.send(command(int(ack.command_id[4:]))) == ack


def test_a_newcomer_waits_behind_deferred_commands(client: Client) -> None:
    client.hold()
    client.send(command(1))
    client.end_hold()
    ack = client.send(command(2, "SMSAPM32_CLOSE"))  # guard free, but cmd-1 is first
    assert ack.status == "deferred"
    assert ack.detail is not None and "1 deferred command(s) ahead" in ack.detail
    assert [a.command_id for a in client.release()] == ["cmd-1", "cmd-2"]
    assert client.starts() == ["cmd-1", "cmd-2"]


def test_expiry_during_deferral_acks_expired_without_signal(client: Client) -> None:
    client.hold()
    client.send(command(1, expires_at=time.time() + 0.3))
    assert not client.deferrals.due()
    time.sleep(0.35)
    assert client.deferrals.due()  # due although the distribution still runs
    (expired,) = client.release()
    assert (expired.status, expired.reason) == ("expired", "expired")
    assert expired.detail is not None and "expired while deferred (lock: " in expired.detail
    client.end_hold()
    assert client.release() == []
    assert client.starts() == []


def test_max_deferral_acks_expired_without_signal(tmp_path: Path) -> None:
    client = Client(tmp_path, DistributionLock(tmp_path / "lock"), max_deferral=0.2)
    client.hold()
    try:
        client.send(command(1))
        time.sleep(0.25)
        (expired,) = client.release()
        assert expired.status == "expired"
        assert expired.detail is not None and "max_deferral 0.2 s" in expired.detail
        assert expired.wait_seconds is not None and expired.wait_seconds >= 0.2
    finally:
        client.close()
    assert client.starts() == []


def test_a_crash_after_signalling_republishes_from_the_journal(client: Client) -> None:
    client.hold()
    client.send(command(1))
    client.send(command(2))
    client.end_hold()
    first = client.release(publish=False)  # signalled, journalled, never published
    client.restart()
    client.hold()  # a new distribution started meanwhile: no signal is needed anyway
    assert client.deferrals.due()
    assert client.release() == first
    assert client.starts() == ["cmd-1"]
    assert len(client.deferrals.spool) == 0


def test_a_crash_between_signal_and_coalesced_acks_still_coalesces(client: Client) -> None:
    client.hold()
    client.send(command(1))
    client.send(command(2))
    client.end_hold()
    journal = client.handler.journal
    client.handler.release(lambda entry, ack: False)  # the session died after the signal
    assert journal.get("cmd-1") is not None and journal.get("cmd-2") is None
    client.restart()
    acks = client.release()
    assert [(a.command_id, a.status) for a in acks] == [("cmd-1", "done"), ("cmd-2", "coalesced")]
    assert client.starts() == ["cmd-1"]


def test_force_is_rejected_unless_allowed(tmp_path: Path) -> None:
    refused = Client(tmp_path / "a", DistributionLock(tmp_path / "lock"))
    allowed = Client(tmp_path / "b", DistributionLock(tmp_path / "lock"), allow_force=True)
    refused.hold()
    try:
        ack = refused.send(command(1, force=True))
        assert (ack.status, ack.reason) == ("rejected", "not-permitted")
        assert refused.starts() == []
        assert allowed.send(command(2, force=True)).status == "done"  # despite the hold
        assert allowed.starts() == ["cmd-2"]
    finally:
        refused.close()
