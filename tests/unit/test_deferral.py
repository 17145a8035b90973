"""Deferral through the handler, with a real lock, spool and journal (no broker)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import deferral
from agent.backends import SignalResult
from agent.backends.simulated import SimulatedBackend
from agent.config import DEFAULT_DISRUPTIVE, AgentConfig, SecurityConfig
from agent.deferral import Deferrals, Released
from agent.guard import DistributionLock, Guard
from agent.handler import Delivery, Handler, Run, Settle
from agent.journal import Journal
from agent.signatures import Signatures
from agent.spool import Hold, Spool
from schemas import Ack, Command, decode, encode
from schemas.rules import OUTPUT_MAX
from schemas.signing import Signer

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
        ack = self.deliver(cmd)
        assert ack is not None, "nothing was answered"
        return ack

    def deliver(self, cmd: Command) -> Ack | None:
        """As :meth:`send`; None when nothing is answered (a command spooled for later)."""
        incoming = Delivery(encode(cmd), cmd.command_id, time.time(), time.monotonic())
        verdict = self.handler.admit(incoming)
        if isinstance(verdict, Settle):
            return None if verdict.ack is None else decode(verdict.ack, Ack)
        assert isinstance(verdict, Run)
        body = self.handler.execute(verdict.command, incoming)
        return None if body is None else decode(body, Ack)

    def release(self, publish: bool = True) -> list[Ack]:
        """One release pass; with ``publish`` the entries are removed as the daemon does."""
        handed: list[Released] = []
        self.handler.release(lambda answer: handed.append(answer) is None)
        if publish:
            for answer in handed:
                if answer.final:
                    self.deferrals.spool.remove(answer.entry)
        return [decode(answer.ack, Ack) for answer in handed]

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
    client.handler.release(lambda answer: False)  # the session died after the signal
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


# -- commands with a later start ------------------------------------------------------------


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()) + 0.02)


def test_a_later_start_is_spooled_unanswered_and_runs_when_due(client: Client) -> None:
    start = time.time() + 0.3
    later = command(1, "CQMGR32_STARTCYCLE", not_before=start)
    assert client.deliver(later) is None  # no interim ack: the delivery is simply taken
    entry = client.deferrals.spool.get("cmd-1")
    assert entry is not None and entry.hold is Hold.SCHEDULED
    assert client.deliver(later) is None  # a redelivery: not spooled twice, still silent
    assert len(client.deferrals.spool) == 1
    assert not client.deferrals.due()
    assert client.release() == []
    assert client.starts() == []

    wait_until(start)
    assert client.deferrals.due()
    (done,) = client.release()
    assert (done.command_id, done.status) == ("cmd-1", "done")
    assert done.started_at is not None and done.started_at >= start
    assert done.wait_seconds is not None and done.wait_seconds >= 0.25
    assert client.starts() == ["cmd-1"]
    assert len(client.deferrals.spool) == 0
    assert client.send(later) == done  # answered from the journal from now on


def test_a_scheduled_command_survives_a_restart_and_runs_once(client: Client) -> None:
    start = time.time() + 0.3
    assert client.deliver(command(1, not_before=start)) is None
    client.restart()
    assert client.deliver(command(1, not_before=start)) is None
    wait_until(start)
    assert [a.status for a in client.release()] == ["done"]
    client.restart()
    assert client.release() == []
    assert client.starts() == ["cmd-1"]


def test_a_scheduled_disruptive_command_waits_for_the_distribution_and_says_so_once(
    client: Client,
) -> None:
    client.hold()
    start = time.time() + 0.2
    assert client.deliver(command(1, not_before=start)) is None
    wait_until(start)
    assert client.deferrals.due()
    (interim,) = client.release()
    assert (interim.status, interim.reason, interim.final) == ("deferred", "busy", False)
    assert interim.detail is not None and interim.detail.startswith("lock: ")
    assert len(client.deferrals.spool) == 1  # an interim ack does not end the wait
    assert client.release() == []  # said once
    assert not client.deferrals.due()
    assert client.send(command(1, not_before=start)).status == "deferred"  # a redelivery
    client.end_hold()
    assert client.deferrals.due()
    assert [a.status for a in client.release()] == ["done"]
    assert client.starts() == ["cmd-1"]


def test_a_scheduled_copy_queue_runs_while_a_distribution_runs(client: Client) -> None:
    client.hold()
    start = time.time() + 0.2
    assert client.deliver(command(1, "CQMGR32_STARTCYCLE", not_before=start)) is None
    wait_until(start)
    assert [a.status for a in client.release()] == ["done"]  # it never waits for the guard
    assert client.starts() == ["cmd-1"]


def test_a_newcomer_does_not_wait_behind_a_command_scheduled_for_later(client: Client) -> None:
    assert client.deliver(command(1, not_before=time.time() + 60)) is None
    assert client.send(command(2, "SMSAPM32_CLOSE")).status == "done"
    assert client.starts() == ["cmd-2"]
    assert 0.1 <= client.deferrals.pause() <= 5.0  # sleeps until the start, at most IDLE


def test_a_scheduled_command_that_expires_first_is_acked_expired(client: Client) -> None:
    now = time.time()
    cmd = command(1, not_before=now + 0.25, expires_at=now + 0.3)
    assert client.deliver(cmd) is None
    client.hold()  # it will start while a distribution runs, then expire
    wait_until(now + 0.3)
    (expired,) = client.release()
    assert (expired.status, expired.reason) == ("expired", "expired")
    assert client.starts() == []


def test_the_spool_refuses_what_it_cannot_hold(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferral, "MAX_WAITING", 2)
    later = time.time() + 60
    assert client.deliver(command(1, not_before=later)) is None
    assert client.deliver(command(2, not_before=later)) is None
    refused = client.send(command(3, not_before=later))
    assert (refused.status, refused.reason) == ("rejected", "busy")
    assert refused.detail is not None and "2 commands already wait" in refused.detail
    assert client.send(command(4, "CQMGR32_STARTCYCLE")).status == "done"  # runs now: fine
    assert len(client.deferrals.spool) == 2


def test_a_failing_spool_is_answered_failed(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.deferrals.spool, "_write", full)
    ack = client.send(command(1, not_before=time.time() + 60))
    assert (ack.status, ack.reason) == ("failed", "signal-failed")
    assert ack.detail is not None and "No space left on device" in ack.detail


# -- the spool checked again on load --------------------------------------------------------


def test_a_spooled_command_that_no_longer_verifies_is_refused_on_load(tmp_path: Path) -> None:
    signer = Signer.generate()
    security = SecurityConfig(public_keys=(signer.public_text(),))
    signatures = Signatures(security)
    guard = Guard([DistributionLock(tmp_path / "lock")], DEFAULT_DISRUPTIVE)
    journal = Journal(tmp_path / "journal")
    spool = Spool(tmp_path / "spool", check=signatures.problem)
    good, bad = command(1), command(2)
    for cmd in (good, bad):
        body = encode(cmd)
        spool.add(
            cmd, time.time(), time.time(), "lock: held", body=body, headers=signer.headers(body)
        )
    # Someone rewrites the second entry: its command now runs another event.
    path = tmp_path / "spool" / spool.get("cmd-2").filename  # type: ignore[union-attr]
    path.write_bytes(path.read_bytes().replace(b"CCIM32", b"CCIM33"))

    reloaded = Spool(tmp_path / "spool", check=signatures.problem)
    assert [e.command_id for e in reloaded.pending()] == ["cmd-1"]
    assert (tmp_path / "spool" / (path.name + ".bad")).exists()
    deferrals = Deferrals(guard, reloaded, journal, CLIENT)
    assert deferrals.due()
    handed: list[Released] = []
    config = AgentConfig(client_id=CLIENT, security=security)
    handler = Handler(config, SimulatedBackend(duration=0), journal, deferrals=deferrals)
    handler.release(lambda answer: handed.append(answer) is None)
    first = decode(handed[0].ack, Ack)
    assert (first.command_id, first.status, first.reason) == ("cmd-2", "rejected", "bad-signature")
    assert [decode(a.ack, Ack).command_id for a in handed[1:]] == ["cmd-1"]
    assert reloaded.quarantined == []  # answered once


def test_entries_spooled_without_their_signature_are_refused_where_keys_are_set(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    spool.add(command(1), 1.0, 1.0, "lock: held")  # no headers: as an earlier release kept it
    signatures = Signatures(SecurityConfig(public_keys=(Signer.generate().public_text(),)))
    reloaded = Spool(tmp_path, check=signatures.problem)
    assert len(reloaded) == 0
    assert [r.problem for r in reloaded.quarantined] == ["unsigned command"]
    assert len(Spool(tmp_path)) == 0  # set aside, not loaded again


def test_a_release_whose_answer_fails_is_answered_failed_once(client: Client) -> None:
    client.hold()
    client.send(command(1))
    client.end_hold()
    runs: list[str] = []

    class Overlong:
        """Ran, but returns what no ack may carry."""

        name = "overlong"

        def signal(self, cmd: Command) -> SignalResult:
            runs.append(cmd.command_id)
            return SignalResult(True, detail="ran", output="x" * (OUTPUT_MAX + 1))

    client.handler.backend = Overlong()
    (failed,) = client.release()
    assert (failed.command_id, failed.status, failed.reason) == ("cmd-1", "failed", "signal-failed")
    assert client.release() == []
    assert runs == ["cmd-1"]  # not signalled again pass after pass


def test_a_damaged_journal_entry_does_not_stop_the_release(client: Client) -> None:
    client.hold()
    client.send(command(1))
    client.send(command(2, "SMSAPM32_CLOSE"))
    client.handler.journal.record("cmd-1", b"\xc1 damaged", time.time() + 300)
    client.end_hold()
    handed: list[Released] = []
    client.handler.release(lambda answer: handed.append(answer) is None)
    first, second = handed
    assert (first.entry.command_id, first.ack) == ("cmd-1", b"\xc1 damaged")
    assert (second.entry.command_id, decode(second.ack, Ack).status) == ("cmd-2", "done")
    assert client.starts() == ["cmd-2"]
