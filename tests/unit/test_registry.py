"""The fleet registry and targeting on a real (temporary) SQLite database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.store.db import DatabaseMissing, DbSettings
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.storms import targets
from schemas.messages import Heartbeat


def beat(client: str, kind: str = "heartbeat", groups: tuple[str, ...] = ()) -> Heartbeat:
    return Heartbeat(
        client_id=client,
        kind=kind,
        sent_at=time.time(),
        platform="nt",
        agent_version="0.1.0",
        groups=groups,
        components={"CCIM32": "2.0"},
    )


@pytest.fixture
def registry(store_db: DbSettings) -> Iterator[StoreRegistry]:
    with StoreRegistry(store_db, RegistrySettings(60)) as opened:
        yield opened


def test_new_clients_are_returned_for_provisioning_until_marked(registry: StoreRegistry) -> None:
    now = time.time()
    assert registry.record([(beat("PC1", "hello"), now), (beat("PC2"), now)]) == ["PC1", "PC2"]
    assert registry.record([(beat("PC1"), now + 1)]) == ["PC1"], "still unprovisioned"
    registry.mark_provisioned(["PC1", "PC2"], now)
    assert registry.record([(beat("PC1"), now + 2), (beat("PC3"), now + 2)]) == ["PC3"]
    record = registry.get("PC1")
    assert record is not None and record.provisioned_at == now
    assert (record.first_seen, record.last_seen) == (now, now + 2)
    assert record.components == {"CCIM32": "2.0"}


def test_a_hello_gets_a_known_clients_queue_declared_again(registry: StoreRegistry) -> None:
    now = time.time()
    registry.record([(beat("PC1", "hello"), now)])
    registry.mark_provisioned(["PC1"], now)
    assert registry.record([(beat("PC1"), now + 1)]) == [], "a heartbeat declares nothing"
    # The agent reconnected (its broker may have lost the queue): hello, then a heartbeat
    # in the same batch; the hello still counts.
    assert registry.record([(beat("PC1", "hello"), now + 2), (beat("PC1"), now + 3)]) == ["PC1"]
    assert registry.record([(beat("PC1", "goodbye"), now + 4)]) == []


def test_offline_after_missed_heartbeats_or_goodbye(registry: StoreRegistry) -> None:
    now = time.time()
    registry.record([(beat("OLD"), now - 61), (beat("NEW"), now), (beat("BYE", "goodbye"), now)])
    assert [r.client_id for r in registry.clients(online=True, now=now)] == ["NEW"]
    assert [r.client_id for r in registry.clients(online=False, now=now)] == ["BYE", "OLD"]
    assert registry.offline_ids(now) == {"BYE", "OLD"}
    assert registry.counts(now) == (1, 2)
    registry.record([(beat("OLD", "hello"), now)])
    assert registry.offline_ids(now) == {"BYE"}


def test_groups_follow_the_latest_heartbeat_only(registry: StoreRegistry) -> None:
    now = time.time()
    registry.record([(beat("PC1", groups=("lab-1",)), now)])
    registry.record([(beat("PC1", groups=("lab-2",)), now + 1)])
    registry.record([(beat("PC1", groups=("lab-3",)), now - 5)])  # late, out of order
    assert [r.client_id for r in registry.clients(group="lab-2")] == ["PC1"]
    assert registry.clients(group="lab-1") == registry.clients(group="lab-3") == []
    assert registry.get("PC1").last_seen == now + 1  # type: ignore[union-attr]


def test_targets_combine_and_deduplicate(registry: StoreRegistry, tmp_path: Path) -> None:
    now = time.time()
    registry.record([(beat(f"PC{n}", groups=("lab",) if n < 2 else ()), now) for n in range(4)])
    listed = tmp_path / "ids"
    listed.write_text("PC3\n# comment\n\nPC9 # not registered: used as given\n")
    spec = targets.TargetSpec(clients=("PC0",), groups=("lab",), clients_file=str(listed))
    assert targets.resolve(spec, registry) == ["PC0", "PC1", "PC3", "PC9"]
    assert targets.resolve(targets.TargetSpec(everyone=True), registry) == [
        "PC0",
        "PC1",
        "PC2",
        "PC3",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (targets.TargetSpec(), "no targets"),
        (targets.TargetSpec(clients=("bad id",)), "invalid client id"),
        (targets.TargetSpec(groups=("nobody",)), "no registered client"),
        (targets.TargetSpec(clients_file="/nonexistent/ids"), "--clients-file"),
    ],
)
def test_target_errors(registry: StoreRegistry, spec: targets.TargetSpec, message: str) -> None:
    with pytest.raises(targets.TargetError, match=message):
        targets.resolve(spec, registry)


def test_groups_need_a_registry_and_reading_needs_a_database(tmp_path: Path) -> None:
    with pytest.raises(targets.TargetError, match="need the fleet registry"):
        targets.resolve(targets.TargetSpec(everyone=True), None)
    with pytest.raises(DatabaseMissing, match="no setevnt database"):
        StoreRegistry(DbSettings(str(tmp_path / "missing.db")), create=False)
