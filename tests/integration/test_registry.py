"""The fleet registry and targeting, against the real broker and real processes."""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from broker import topology
from tests.conftest import management
from tests.integration.fleet import Fleet, runs, wait_runs
from tests.integration.helpers import agent_connections, queue_depth, start_agent, wait_for

pytestmark = pytest.mark.broker


def test_clients_appear_get_their_queue_and_heartbeats_refresh_them(fleet: Fleet) -> None:
    fleet.serve("--offline-after", "30s")
    fleet.simulate(4, "--groups", "lab-1,floor-2", "--hello-interval", "0.4")
    listed = wait_for(lambda: len(fleet.clients()) == 4 and fleet.clients(), 15, "4 clients")
    assert {c["client"] for c in listed} == {"SIM00000", "SIM00001", "SIM00002", "SIM00003"}
    assert all(c["state"] == "online" and c["provisioned"] for c in listed)
    assert all(c["groups"] == ["lab-1", "floor-2"] and c["platform"] == "nt" for c in listed)
    # Provisioned by the registry, not by the simulator (which only asked passively).
    assert queue_depth(fleet.url, topology.client_queue("SIM00002")) == 0
    first = {c["client"]: c["last_seen"] for c in listed}

    def refreshed() -> bool:
        later = {c["client"]: c["last_seen"] for c in fleet.clients()}
        return all(later[c] > first[c] for c in first)

    wait_for(refreshed, 15, "heartbeats refresh last_seen")
    assert {c["client"] for c in fleet.clients("--group", "floor-2")} == set(first)
    assert fleet.clients("--group", "lab-9") == []


def test_a_queue_the_broker_lost_comes_back_when_its_agent_reconnects(
    fleet: Fleet, vhost: str, tmp_path: Path
) -> None:
    fleet.serve()
    agent = start_agent(fleet.url, "PC001", tmp_path)  # consumes once its hello provisioned it
    try:
        queue = topology.client_queue("PC001")
        names = wait_for(lambda: agent_connections(vhost, "PC001"), 20, "agent connections")
        before = len(agent.lines)
        # What a broker rebuilt from its definitions does to a client: no queue, and the
        # agent's connections are gone.
        quoted = urllib.parse.quote(vhost, safe="")
        management("DELETE", f"/queues/{quoted}/{urllib.parse.quote(queue, safe='')}")
        for name in names:
            try:
                management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")
            except urllib.error.HTTPError as exc:
                # The listing lags: a connection already gone is 404, and one closing
                # while the API closes it too is 500. The agent's reconnect is what counts.
                if exc.code not in (404, 500):
                    raise
        agent.wait_line(f"agent PC001 consuming {queue}", timeout=45, after=before)
        assert queue_depth(fleet.url, queue) == 0
        done = fleet.setevnt("--client", "PC001", "cq", "--wait", "20", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["status"] == "done"
    finally:
        agent.terminate()


def test_clients_go_offline_after_missed_heartbeats_or_goodbye(fleet: Fleet) -> None:
    fleet.serve()
    silent = fleet.simulate(2, "--hello-interval", "0.3", prefix="GONE")
    leaving = fleet.simulate(2, "--hello-interval", "0.3", prefix="BYE")
    wait_for(lambda: len(fleet.clients()) == 4, 15, "4 registered clients")
    silent.kill()  # no goodbye: only missed heartbeats tell
    leaving.terminate()  # says goodbye
    offline = wait_for(
        lambda: (
            {c["client"] for c in fleet.clients("--offline", "--offline-after", "1.5s")}
            >= {"GONE00000", "GONE00001", "BYE00000", "BYE00001"}
        ),
        10,
        "all four offline",
    )
    assert offline
    # With the default threshold (180 s) only the ones that said goodbye are offline.
    assert {c["client"] for c in fleet.clients("--offline")} == {"BYE00000", "BYE00001"}
    table = fleet.dispatcher("clients", "--offline-after", "1.5s")
    assert table.returncode == 0 and table.stdout.count("offline") == 4


def test_setevnt_targets_clients_groups_all_and_files(fleet: Fleet, tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    fleet.serve()  # its collector records what `setevnt` sends
    fleet.simulate(6, "--provision", "--record", str(record))
    fleet.register(["SIM00000", "SIM00001"], groups=("lab-1",))
    fleet.register(["SIM00002", "SIM00003", "SIM00004", "SIM00005"], groups=("lab-2",))
    ids = tmp_path / "ids.txt"
    ids.write_text("# a comment\nSIM00004\n\nSIM00005  # trailing comment\n")
    forms = [
        (["--client", "SIM00000", "--client", "SIM00003"], {"SIM00000", "SIM00003"}),
        (["--group", "lab-1"], {"SIM00000", "SIM00001"}),
        (["--clients-file", str(ids)], {"SIM00004", "SIM00005"}),
        (["--group", "lab-1", "--client", "SIM00005"], {"SIM00000", "SIM00001", "SIM00005"}),
        (["--all", "--yes"], {f"SIM0000{n}" for n in range(6)}),
    ]
    total = 0
    for args, expected in forms:
        done = fleet.setevnt(*args, "cq", "--wait", "20", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert {r["client"] for r in rows} == expected, args
        assert all(r["status"] == "done" for r in rows)
        total += len(expected)
        # Recorded in the ledger by the service's collector, so status finds them by id.
        first = rows[0]["command_id"]
        shown = wait_for(functools.partial(_shown, fleet, first), 15, "the command in the ledger")
        assert shown["client_id"] in expected and shown["status"] == "done"
    assert sum(len(v) for v in wait_runs(record, total).values()) == total
    assert runs(record).keys() == {f"SIM0000{n}" for n in range(6)}


def _shown(fleet: Fleet, command_id: str) -> dict[str, Any] | None:
    done = fleet.dispatcher("status", command_id, "--json")
    if done.returncode != 0:
        return None
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown if shown["status"] == "done" else None


def test_targeting_errors_are_usage_errors(fleet: Fleet, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("SIM00001\nnot a client\n")
    fleet.register(["SIM00001"], groups=("lab-1",))
    assert fleet.setevnt("cq").returncode == 2  # no target at all
    shown = fleet.setevnt("--clients-file", str(bad), "cq")
    assert shown.returncode == 2 and "bad.txt:2" in shown.stderr
    shown = fleet.setevnt("--group", "nobody", "cq")
    assert shown.returncode == 2 and "no registered client" in shown.stderr
    shown = fleet.dispatcher("storm", "CCIM32_STARTCYCLE", "--group", "nobody")
    assert shown.returncode == 2 and "no registered client" in shown.stderr
