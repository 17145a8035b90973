"""Several dispatchers on one database and one broker: competing consumers, takeover.

Real ``serve`` processes in the test's vhost sharing one SQLite database, simulated
fleets that record every run, and a requester enrolled as a real broker user (deleted
afterwards).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher import Client
from dispatcher.access.services import enroll_service
from dispatcher.api.client import Handle
from dispatcher.cli.site import ROUND_ENV
from dispatcher.store.leases import LEASE
from tests.integration.fleet import Fleet, runs, storm_id_of, wait_runs
from tests.integration.helpers import Process, wait_for

pytestmark = pytest.mark.broker

POLICY = """
[users.{ops}]
events = ["*"]
targets = ["client"]
max_targets = 1000
"""
SHARED_CLIENTS = 300
TAKEOVER_CLIENTS = 200
TAKEOVER_RATE = 25.0  # commands/s: ~8 s of publishing, for its dispatcher to die in
TAKEOVER_WAIT = LEASE + 10  # the lease, a takeover look (2 s), and room
ROUND = 0.5  # seconds between the remediating services' rounds (the default is 1 s)


def metric(serve: Process, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels on one dispatcher's /metrics."""
    port = re.search(r"metrics on http://[\d.]+:(\d+)/", serve.output)
    assert port, serve.output
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics") as page:
        text = page.read().decode()
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(f"{name}{{") or line.startswith(f"{name} ")
        if named and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.split()[-1])
    return total


def command_rows(fleet: Fleet, storm_id: str) -> list[tuple[str, str, str, int | None]]:
    """(client id, command id, status, answer batch) of each of the storm's commands."""
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        return db.execute(
            "SELECT client_id, command_id, status, answer_seq FROM commands WHERE storm_id = ?",
            (storm_id,),
        ).fetchall()


def storm_row(fleet: Fleet, storm_id: str) -> tuple[str, str]:
    """(state, owner) of a storm."""
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        row = db.execute(
            "SELECT state, owner FROM storms WHERE storm_id = ?", (storm_id,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_two_dispatchers_record_every_outcome_once(fleet: Fleet, tmp_path: Path) -> None:
    """Two services share the ack and fleet queues: both collect, and each of a storm's
    300 outcomes is recorded once (one answer batch, counted by one of them)."""
    dispatchers = [fleet.serve(), fleet.serve()]
    record = tmp_path / "runs.jsonl"
    fleet.simulate(SHARED_CLIENTS, "--connections", "3", "--record", str(record))
    wait_for(
        lambda: len(fleet.clients()) == SHARED_CLIENTS, 30, "every client registered"
    )  # through the shared fleet queue
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"SIM{n:05d}\n" for n in range(SHARED_CLIENTS)))
    code, outcome = fleet.storm("CCIM32_STARTCYCLE", "--clients-file", str(targets))
    assert code == 0, outcome
    assert outcome["counts"] == {"done": SHARED_CLIENTS}
    storm_id = outcome["storm_id"]
    rows = command_rows(fleet, storm_id)
    assert len(rows) == SHARED_CLIENTS == len({command for _, command, _, _ in rows})
    assert {status for _, _, status, _ in rows} == {"done"}
    assert all(seq is not None for *_, seq in rows)
    done = [metric(serve, "setevnt_command_outcomes_total", status="done") for serve in dispatchers]
    print(f"outcomes recorded per dispatcher: {done}")
    assert sum(done) == SHARED_CLIENTS, f"outcomes counted per dispatcher: {done}"
    assert all(share > 0 for share in done), f"one dispatcher took every ack: {done}"
    ran = runs(record)
    assert len(ran) == SHARED_CLIENTS and all(len(ids) == 1 for ids in ran.values())
    shown = fleet.status(storm_id)
    assert (shown["state"], shown["acked"]) == ("done", SHARED_CLIENTS)


@pytest.fixture
def requester(amqp_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A service allowed to storm clients (its broker URL) and the policy file naming it."""
    settings = BrokerSettings(url=amqp_url)
    management = Management.for_broker(settings)
    name = f"ops-{uuid.uuid4().hex[:8]}"
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(ops=name))
    try:
        yield enroll_service(settings, management, name).url, policy
    finally:
        if management.user_exists(name):
            management.delete_user(name)


@pytest.mark.parametrize("fate", ["killed", "frozen"])
def test_a_dead_dispatchers_storm_is_taken_over_and_no_command_runs_twice(
    fleet: Fleet, requester: tuple[str, Path], tmp_path: Path, fate: str
) -> None:
    """The service running a request storm is SIGKILLed (or SIGSTOPped past its lease)
    mid-storm: the other one takes it over, resumes it with the same command ids and
    sends the requester the summary; no client runs a command twice, every command is
    acked. A frozen one, woken, sees its storm taken and stops publishing it."""
    url, policy = requester
    dispatchers = [fleet.serve("--policy", str(policy)) for _ in range(2)]
    for serve in dispatchers:
        serve.wait_line("taking requests from setevnt.requests")
    record = tmp_path / "runs.jsonl"
    clients = [f"TKO{n:05d}" for n in range(TAKEOVER_CLIENTS)]
    fleet.simulate(TAKEOVER_CLIENTS, "--record", str(record), prefix="TKO")
    wait_for(lambda: len(fleet.clients()) == TAKEOVER_CLIENTS, 30, "the clients registered")
    with Client(url, accept_timeout=15) as client:
        handle = client.trigger("CCIM32_STARTCYCLE", clients=clients, rate=TAKEOVER_RATE)
        wait_runs(record, 40, timeout=60)  # well under way
        _, owner = storm_row(fleet, handle.storm_id)
        pid = int(owner.split()[1])
        running, survivor = sorted(dispatchers, key=lambda s: s.proc.pid != pid)
        assert running.proc.pid == pid, f"{owner} is neither dispatcher"
        running.proc.send_signal(signal.SIGKILL if fate == "killed" else signal.SIGSTOP)
        stopped = time.monotonic()
        if fate == "killed":
            running.kill()  # reaped, as its service manager would: its process is gone
        unsent = [s for _, _, s, _ in command_rows(fleet, handle.storm_id) if s == "planned"]
        assert unsent, "the storm ended before its dispatcher was stopped"

        def taken_over() -> str | None:
            _state, holder = storm_row(fleet, handle.storm_id)
            return holder if holder != owner else None

        try:
            holder: str | None = wait_for(taken_over, TAKEOVER_WAIT, "a takeover")
        except AssertionError:
            holder = None
        finally:
            if fate == "frozen":
                running.proc.send_signal(signal.SIGCONT)
        took = time.monotonic() - stopped
        if holder is None and fate == "frozen":
            # Frozen inside a write, it held SQLite's lock: nobody could take anything,
            # and woken it went on with its storm. Either way nothing may run twice.
            assert "database is locked" in survivor.output, survivor.output
        else:
            assert holder is not None, survivor.output
            assert holder.split()[1] == str(survivor.proc.pid)
            if fate == "frozen":
                assert took >= LEASE - 1, f"taken over {took:.1f} s after a freeze"
                running.wait_line("stopped publishing it", timeout=20)
        summary = handle.wait(timeout=90)
    print(f"{fate}: taken over by {holder} {took:.1f} s later; {len(unsent)} unsent")
    assert (summary.state, summary.published) == ("done", TAKEOVER_CLIENTS)
    assert summary.counts == {"done": TAKEOVER_CLIENTS}
    rows = command_rows(fleet, handle.storm_id)
    assert len(rows) == TAKEOVER_CLIENTS == len({command for _, command, _, _ in rows})
    assert {status for _, _, status, _ in rows} == {"done"}
    assert storm_row(fleet, handle.storm_id) == ("done", holder or owner)
    ran = wait_runs(record, TAKEOVER_CLIENTS)
    assert sorted(ran) == clients
    assert all(len(ids) == 1 for ids in ran.values()), "a client ran its command twice"
    again = sum(
        metric(s, "setevnt_duplicate_acks_total") for s in dispatchers if s.proc.poll() is None
    )
    print(f"{fate}: commands delivered twice (answered again from the journal): {again:.0f}")
    if holder is not None:
        assert "resuming request storm" in survivor.output


def test_an_operators_storm_whose_process_died_is_finished_by_a_service(
    fleet: Fleet, tmp_path: Path
) -> None:
    """``serve --take-over-storms``: a ``storm`` process SIGKILLed mid-storm is taken
    over by the service, which sends the rest with the same ids; nobody runs twice."""
    serve = fleet.serve("--take-over-storms")
    record = tmp_path / "runs.jsonl"
    fleet.simulate(TAKEOVER_CLIENTS, "--record", str(record), prefix="OPS")
    wait_for(lambda: len(fleet.clients()) == TAKEOVER_CLIENTS, 30, "the clients registered")
    targets = tmp_path / "targets.txt"
    clients = [f"OPS{n:05d}" for n in range(TAKEOVER_CLIENTS)]
    targets.write_text("".join(f"{c}\n" for c in clients))
    storm = fleet.start_storm(
        "CCIM32_STARTCYCLE", "--clients-file", str(targets), "--rate", f"{TAKEOVER_RATE}/s"
    )
    storm.wait_line("storm storm-", timeout=20)
    storm_id = storm_id_of(storm.lines)
    assert storm_id is not None, storm.output
    wait_runs(record, 40, timeout=60)
    storm.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    storm.kill()
    _, owner = storm_row(fleet, storm_id)
    assert owner.split()[1] == str(storm.proc.pid)

    def taken_over() -> str | None:
        _state, holder = storm_row(fleet, storm_id)
        return holder if holder != owner else None

    holder = wait_for(taken_over, TAKEOVER_WAIT, "the service to take it over")
    took = time.monotonic() - killed
    assert holder.split()[1] == str(serve.proc.pid)
    wait_for(lambda: fleet.status(storm_id)["state"] == "done", 60, "the storm done")
    wait_for(lambda: fleet.status(storm_id)["acked"] == TAKEOVER_CLIENTS, 30, "every ack")
    print(f"operator's storm: taken over {took:.1f} s after the kill")
    rows = command_rows(fleet, storm_id)
    assert len(rows) == TAKEOVER_CLIENTS == len({command for _, command, _, _ in rows})
    assert {status for _, _, status, _ in rows} == {"done"}
    ran = wait_runs(record, TAKEOVER_CLIENTS)
    assert sorted(ran) == clients
    assert all(len(ids) == 1 for ids in ran.values()), "a client ran its command twice"
    again = metric(serve, "setevnt_duplicate_acks_total")
    print(f"operator's storm: commands delivered twice (answered from the journal): {again:.0f}")
    assert f"resuming storm {storm_id}" in serve.output


def test_a_retry_taken_by_the_other_dispatcher_gets_the_summary_too(
    fleet: Fleet, requester: tuple[str, Path], tmp_path: Path
) -> None:
    """Retries of one request (same idempotency key) reach either service: the one that
    does not run the storm leaves the retry's reply address to the one that does, and
    every asker gets the one summary."""
    url, policy = requester
    dispatchers = [fleet.serve("--policy", str(policy)) for _ in range(2)]
    for serve in dispatchers:
        serve.wait_line("taking requests from setevnt.requests")
    clients = [f"RTY{n:05d}" for n in range(40)]
    fleet.simulate(len(clients), prefix="RTY")
    wait_for(lambda: len(fleet.clients()) == len(clients), 30, "the clients registered")
    key = f"K-{uuid.uuid4().hex}"
    with Client(url, accept_timeout=15) as client:

        def ask() -> Handle:
            return client.trigger(
                "CCIM32_STARTCYCLE", clients=clients, idempotency_key=key, rate=10
            )

        first = ask()
        _, owner = storm_row(fleet, first.storm_id)
        (other,) = [s for s in dispatchers if str(s.proc.pid) != owner.split()[1]]
        retries = []
        while metric(other, "setevnt_requests_total", outcome="replayed") == 0:
            assert len(retries) < 10, "no retry reached the other dispatcher"
            retries.append(ask())
        summary = first.wait(timeout=60)
        assert (summary.state, summary.counts) == ("done", {"done": len(clients)})
        for retry in retries:
            assert retry.replayed and retry.storm_id == first.storm_id
            assert retry.wait(timeout=15) == summary


def test_two_remediating_dispatchers_run_one_upgrade_storm(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both services remediate drift: the one holding the version's storm sends each
    drifted client one upgrade; the other stays out (it cannot take a live lease)."""
    monkeypatch.setenv(ROUND_ENV, str(ROUND))
    record = tmp_path / "runs.jsonl"
    dispatchers = [fleet.serve("--copylist-version", "V2", "--remediate") for _ in range(2)]
    fleet.simulate(
        30,
        *("--copylist-version", "V1", "--upgrade-to", "V2", "--hello-interval", "0.3"),
        *("--record", str(record)),
        prefix="DRF",
    )

    def upgraded() -> bool:
        shown = fleet.clients()
        return len(shown) == 30 and {c["copylist_version"] for c in shown} == {"V2"}

    wait_for(upgraded, 30, "every client upgraded")
    time.sleep(2.5 * ROUND)  # more rounds of both services: nothing is sent again
    ran = runs(record)
    assert len(ran) == 30 and all(len(ids) == 1 for ids in ran.values()), ran
    with contextlib.closing(sqlite3.connect(fleet.db)) as db:
        storms = db.execute("SELECT storm_id, owner FROM storms").fetchall()
        commands = db.execute("SELECT client_id, status FROM commands").fetchall()
    assert len(storms) == 1 and len(commands) == 30, (storms, commands)
    assert all(s.proc.poll() is None for s in dispatchers), "a remediation thread failed"
