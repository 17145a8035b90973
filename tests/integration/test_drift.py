"""CopyListVersion drift and its remediation (KB Q174961), against the real broker.

The service (`setevnt-dispatcher serve`), simulated fleets and a real agent run as
processes in the test's own vhost; what was sent comes from the ledger and the broker's
queues, what ran from the simulator's record or the agent's setup program.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from broker import topology
from dispatcher import Dispatcher
from dispatcher.cli.site import ROUND_ENV
from dispatcher.service.drift import CLISETUP_STARTCYCLE, RETRY_ROUNDS, storm_id_for
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger
from dispatcher.store.registry import StoreRegistry
from schemas.messages import Heartbeat
from tests.integration.fleet import Fleet, runs
from tests.integration.helpers import (
    Process,
    guard_toml,
    queue_depth,
    security_toml,
    start_hold,
    wait_for,
)

pytestmark = pytest.mark.broker

SETUP = "CLISETUP_STARTCYCLE"
BEAT = "0.3"  # seconds between simulated heartbeats
ROUND = 0.5  # seconds between remediation rounds: shorter than a service's, still several beats
ROUNDS = 2.5 * ROUND  # a little over two remediation rounds


@pytest.fixture(autouse=True)
def short_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service a test starts runs its remediation rounds every ROUND seconds."""
    monkeypatch.setenv(ROUND_ENV, str(ROUND))


def ids(prefix: str, count: int) -> set[str]:
    return {f"{prefix}{n:05d}" for n in range(count)}


def drifted(fleet: Fleet) -> dict[str, dict[str, object]]:
    return {c["client"]: c for c in fleet.clients("--drifted")}


def upgrade_commands(fleet: Fleet, version: str) -> list[CommandRecord]:
    with Ledger(DbSettings(str(fleet.db))) as ledger:
        return ledger.storm_commands(storm_id_for(CLISETUP_STARTCYCLE, version))


def site(fleet: Fleet, *args: str) -> dict[str, object]:
    done = fleet.dispatcher("site", *args)
    assert done.returncode == 0, done.stderr
    if args[0] == "show":
        shown: dict[str, object] = json.loads(done.stdout)
        return shown
    return {}


def finished(shown: dict[str, object]) -> dict[str, object] | None:
    """The upgrade storm once it is no longer running (the next round after the last
    client left the drifted list)."""
    upgrade = shown["upgrade"]
    assert isinstance(upgrade, dict)
    return upgrade if upgrade["state"] != "running" else None


def scrape(service: Process) -> str:
    line = next(x for x in service.lines if "metrics on http://" in x)
    url = line[line.index("http://") :].strip()
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def register(fleet: Fleet, clients: set[str], version: str) -> None:
    """Clients that exist, are online and have a queue, but run no agent (yet)."""
    now = time.time()
    beats = [
        (Heartbeat(c, "heartbeat", now, "nt", "0.1.0", copylist_version=version), now)
        for c in sorted(clients)
    ]
    with StoreRegistry(DbSettings(str(fleet.db))) as registry:
        registry.record(beats)
        with Dispatcher(fleet.url) as dispatcher:
            dispatcher.provision(sorted(clients))
        registry.mark_provisioned(clients, now)  # as the collector does


# -- detection --------------------------------------------------------------------------


def test_drift_is_detected_from_heartbeats_listed_and_counted(fleet: Fleet) -> None:
    service = fleet.serve("--copylist-version", "V2")
    fleet.simulate(3, "--copylist-version", "V1", "--hello-interval", BEAT, prefix="OLD")
    fleet.simulate(2, "--copylist-version", "V2", "--hello-interval", BEAT, prefix="NEW")
    fleet.simulate(1, "--hello-interval", BEAT, prefix="MUTE")  # reports no version
    wait_for(lambda: len(fleet.clients()) == 6, 15, "6 registered clients")

    listed = drifted(fleet)
    assert set(listed) == ids("OLD", 3)
    assert {c["copylist_version"] for c in listed.values()} == {"V1"}
    assert {c["site_copylist_version"] for c in listed.values()} == {"V2"}
    metrics = scrape(service)
    assert gauge(metrics, 'setevnt_clients_drifted{state="online"}') == 3
    assert gauge(metrics, 'setevnt_clients_drifted{state="offline"}') == 0
    assert gauge(metrics, "setevnt_clients_site_version") == 2
    shown = site(fleet, "show", "--json")
    assert (shown["copylist_version"], shown["drifted"], shown["current"]) == ("V2", 3, 2)
    assert (shown["unknown"], shown["upgrade"]) == (1, None)  # remediation is off

    site(fleet, "set-version", "V1")  # the running service sees it at the next scrape
    assert set(drifted(fleet)) == ids("NEW", 2)
    assert gauge(scrape(service), 'setevnt_clients_drifted{state="online"}') == 2
    table = fleet.dispatcher("clients", "--drifted")
    assert table.returncode == 0 and "V2 *" in table.stdout and "OLD00000" not in table.stdout


def test_drifted_needs_a_site_version(fleet: Fleet) -> None:
    fleet.serve()
    fleet.simulate(1, "--copylist-version", "V1", "--hello-interval", BEAT)
    wait_for(lambda: fleet.clients(), 15, "a registered client")
    refused = fleet.dispatcher("clients", "--drifted")
    assert refused.returncode == 2 and "site set-version" in refused.stderr
    assert fleet.clients()[0]["copylist_version"] == "V1"
    for bad in ("", " V2", "V" * 65, "V2\n"):
        refused = fleet.dispatcher("site", "set-version", bad)
        assert refused.returncode == 2 and "CopyListVersion" in refused.stderr, bad
    refused = fleet.dispatcher("clients", "--drifted")
    assert refused.returncode == 2, "nothing was stored by the refused versions"


# -- remediation ------------------------------------------------------------------------


def test_each_drifted_client_is_upgraded_once_and_leaves_the_list(
    fleet: Fleet, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    fleet.serve("--copylist-version", "V2", "--remediate")
    fleet.simulate(
        4,
        *("--copylist-version", "V1", "--upgrade-to", "V2", "--hello-interval", BEAT),
        *("--record", str(record)),
        prefix="PC",
    )
    fleet.simulate(2, "--copylist-version", "V2", "--hello-interval", BEAT, prefix="OK")
    wait_for(lambda: len(fleet.clients()) == 6 and not drifted(fleet), 20, "no drifted client")

    upgraded = runs(record)
    assert set(upgraded) == ids("PC", 4)
    assert all(len(commands) == 1 for commands in upgraded.values()), upgraded
    assert {c["copylist_version"] for c in fleet.clients()} == {"V2"}
    upgrade = wait_for(lambda: finished(site(fleet, "show", "--json")), 5, "the upgrade done")
    assert (upgrade["targets"], upgrade["acked"], upgrade["state"]) == (4, 4, "done")
    assert fleet.status(upgrade["storm_id"])["acked"] == 4  # `status STORM_ID` shows it
    time.sleep(ROUNDS)  # heartbeats keep coming: nothing is sent again
    assert sum(len(v) for v in runs(record).values()) == 4
    assert len(upgrade_commands(fleet, "V2")) == 4


def test_upgrade_waits_for_a_distribution_then_the_agent_reports_the_new_version(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A real agent whose setup program (exec backend) rewrites its version file."""
    version_file = tmp_path / "copylist"
    version_file.write_text("V1\n")
    fleet.serve("--copylist-version", "V2", "--remediate")
    holder = start_hold(tmp_path / "distribution.lock", "sleep", "60")
    agent = start_exec_agent(fleet, tmp_path, "PC042", version_file)
    try:
        wait_for(lambda: "PC042" in drifted(fleet), 15, "PC042 drifted")
        wait_for(
            lambda: [c.status for c in upgrade_commands(fleet, "V2")] == ["deferred"],
            15,
            "the upgrade deferred by the agent's guard",
        )
        time.sleep(ROUNDS)
        assert version_file.read_text() == "V1\n", "setup ran during the distribution"
        assert [c.status for c in upgrade_commands(fleet, "V2")] == ["deferred"]
        assert drifted(fleet)["PC042"]["copylist_version"] == "V1"

        holder.terminate()  # the distribution ends: setup runs, the file says V2
        wait_for(lambda: not drifted(fleet), 15, "PC042 no longer drifted")
        assert version_file.read_text().strip() == "CopyListVersion=V2"
        (command,) = upgrade_commands(fleet, "V2")
        assert command.status == "done"
        assert fleet.clients()[0]["copylist_version"] == "V2"
    finally:
        holder.terminate()
        agent.terminate()


def start_exec_agent(fleet: Fleet, tmp: Path, client_id: str, version_file: Path) -> Process:
    setup = [
        sys.executable,
        "-c",
        f"open({str(version_file)!r}, 'w').write('CopyListVersion=V2\\n')",
    ]
    config = tmp / f"{client_id}.toml"
    config.write_text(
        f'client_id = "{client_id}"\n'
        f"copylist_version_file = {json.dumps(str(version_file))}\n"
        "[agent]\n"
        f"journal = {json.dumps(str(tmp / 'journal'))}\n"
        "hello_interval = 0.3\n"
        + guard_toml(tmp, client_id)
        + security_toml()
        + '[[components]]\nname = "CLISETUP"\nevents = ["STARTCYCLE"]\n'
        + '[backend]\ntype = "exec"\n[backend.exec.commands]\n'
        + f"{SETUP} = {json.dumps(setup)}\n"
    )
    agent = Process(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env={"SETEVNT_AMQP_URL": fleet.url},
    )
    agent.wait_line(f"agent {client_id} consuming {topology.client_queue(client_id)}")
    return agent


def test_changing_the_version_back_and_forth_enqueues_no_duplicates(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Clients that do not consume yet: every command sent stays in their queues."""
    clients = ids("BF", 3)
    fleet.serve("--remediate")
    register(fleet, clients, "V1")

    def depths() -> list[int]:
        return [queue_depth(fleet.url, topology.client_queue(c)) for c in sorted(clients)]

    site(fleet, "set-version", "V2")
    wait_for(lambda: depths() == [1, 1, 1], 15, "one upgrade command per client")
    for version in ("V3", "V2", "V1", "V2"):
        site(fleet, "set-version", version)
        time.sleep(ROUNDS)
        assert depths() == [1, 1, 1], f"after set-version {version}"
    assert [c.status for c in upgrade_commands(fleet, "V2")] == ["sent"] * 3
    v3 = upgrade_commands(fleet, "V3")  # covered by the pending V2 commands
    assert [c.status for c in v3] == ["coalesced"] * 3
    assert {c.coalesced_into for c in v3} == {c.command_id for c in upgrade_commands(fleet, "V2")}

    record = tmp_path / "runs.jsonl"
    fleet.simulate(
        3,
        *("--copylist-version", "V1", "--upgrade-to", "V2", "--hello-interval", BEAT),
        *("--record", str(record)),
        prefix="BF",
    )
    wait_for(lambda: not drifted(fleet), 20, "every client upgraded")
    time.sleep(ROUNDS)
    assert {c: len(v) for c, v in runs(record).items()} == dict.fromkeys(clients, 1)


def test_a_client_still_drifted_after_its_command_expired_gets_another(fleet: Fleet) -> None:
    register(fleet, {"GONE00000"}, "V1")  # online by its last heartbeat, never consumes
    fleet.serve("--copylist-version", "V2", "--remediate", "--upgrade-ttl", "2s")

    def sent_commands() -> list[CommandRecord]:
        # A retry is written down (planned) a moment before it is published.
        return [c for c in upgrade_commands(fleet, "V2") if c.issued_at is not None]

    wait_for(lambda: len(sent_commands()) >= 3, 15, "two retries")
    sent = sent_commands()
    for earlier, later in itertools.pairwise(sent):
        assert earlier.expires_at is not None and later.issued_at is not None
        assert later.issued_at >= earlier.expires_at, "a retry before the expiry"
    assert queue_depth(fleet.url, topology.DEAD_QUEUE) >= 1  # the broker expired them


def seen(fleet: Fleet, client_id: str, *, provisioned: bool) -> None:
    """An online drifted client the registry knows, with no queue on the broker: one the
    collector is still provisioning, or (``provisioned``) one a rebuilt broker lost."""
    now = time.time()
    beat = Heartbeat(client_id, "heartbeat", now, "nt", "0.1.0", copylist_version="V1")
    with StoreRegistry(DbSettings(str(fleet.db))) as registry:
        registry.record([(beat, now)])
        if provisioned:
            registry.mark_provisioned([client_id], now)


def test_a_client_is_upgraded_once_its_queue_is_provisioned(fleet: Fleet) -> None:
    """Not before: no command is sent where it has nowhere to go."""
    seen(fleet, "NEW00000", provisioned=False)
    service = fleet.serve("--copylist-version", "V2", "--remediate")
    wait_for(lambda: any("remediation: storm" in x for x in service.lines), 15, "a storm")
    time.sleep(ROUNDS)
    assert upgrade_commands(fleet, "V2") == []
    register(fleet, {"NEW00000"}, "V1")

    def statuses() -> list[str]:
        return [c.status for c in upgrade_commands(fleet, "V2")]

    wait_for(lambda: "sent" in statuses(), 15, "the upgrade sent")
    assert statuses() == ["sent"]
    assert queue_depth(fleet.url, topology.client_queue("NEW00000")) == 1


def test_an_upgrade_to_a_lost_queue_is_sent_again_once_it_is_back(fleet: Fleet) -> None:
    """Its first upgrade is unroutable; the next one goes out rounds later, not an hour
    later (the upgrade's TTL here)."""
    seen(fleet, "LOST00000", provisioned=True)
    fleet.serve("--copylist-version", "V2", "--remediate")

    def statuses() -> list[str]:
        return [c.status for c in upgrade_commands(fleet, "V2")]

    wait_for(lambda: "unroutable" in statuses(), 15, "the upgrade found no queue")
    with Dispatcher(fleet.url) as dispatcher:
        dispatcher.provision(["LOST00000"])
    wait_for(lambda: "sent" in statuses(), 10 * RETRY_ROUNDS * ROUND, "the upgrade sent again")
    assert statuses().count("sent") == 1
    assert queue_depth(fleet.url, topology.client_queue("LOST00000")) == 1
