"""CopyListVersion: what agents report, the site's version, the registry's census."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, load
from agent.copylist import CopyListVersion
from dispatcher.service.drift import CLISETUP_STARTCYCLE, parse_event, storm_id_for
from dispatcher.store.db import DbSettings
from dispatcher.store.registry import Census, RegistrySettings, StoreRegistry
from dispatcher.store.site import Site
from schemas.messages import Heartbeat


def test_the_version_file_is_read_at_every_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "copylist"
    reader = CopyListVersion("1.0", str(path))
    assert reader.read() == "1.0"  # no file yet: the configured value
    path.write_text("\n  2.0  \nignored\n")
    assert reader.read() == "2.0"
    path.write_text("[SMS]\nSiteCode=ABC\ncopylistversion = 3.1\n")  # an Sms.ini-like file
    assert reader.read() == "3.1"
    path.write_text("x" * 65)
    assert reader.read() == "1.0"  # too long to be a version
    assert CopyListVersion(None, str(tmp_path / "missing")).read() is None
    assert CopyListVersion("4.0").read() == "4.0"


def test_agent_config_takes_a_version_or_a_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('client_id = "PC042"\ncopylist_version_file = "/var/lib/v"\n')
    assert load(path, environ={}).copylist_version_file == "/var/lib/v"
    path.write_text('client_id = "PC042"\ncopylist_version = " 1.0"\n')
    with pytest.raises(ConfigError, match="copylist_version"):
        load(path, environ={})
    path.write_text('client_id = "PC042"\ncopylist_version = 3\n')
    with pytest.raises(ConfigError, match="must be a string"):
        load(path, environ={})


def test_the_configured_version_only_seeds_an_empty_site(store_db: DbSettings) -> None:
    with Site(store_db) as site:
        assert site.copylist_version() is None
        assert site.seed_copylist_version("V1", "serve")
        site.set_copylist_version("V2", "operator")
        assert not site.seed_copylist_version("V1", "serve")  # a restart keeps V2
        stored = site.copylist_version()
        assert stored is not None and (stored.value, stored.set_by) == ("V2", "operator")
        with pytest.raises(ValueError, match="CopyListVersion"):
            site.set_copylist_version("", "operator")


def _beat(client_id: str, version: str | None, kind: str = "heartbeat") -> Heartbeat:
    return Heartbeat(client_id, kind, time.time(), "nt", "0.1.0", copylist_version=version)


def test_census_counts_drifted_current_and_unknown_clients(store_db: DbSettings) -> None:
    now = time.time()
    with StoreRegistry(store_db, RegistrySettings(60)) as registry:
        registry.record(
            [
                (_beat("A", "V1"), now),
                (_beat("B", "V1"), now - 600),  # offline: missed heartbeats
                (_beat("C", "V2"), now),
                (_beat("D", None), now),
                (_beat("E", "V1", "goodbye"), now),
            ]
        )
        assert registry.census("V2", now) == Census(1, 2, 1, 1)
        assert [c.client_id for c in registry.drifted("V2", online=True, now=now)] == ["A"]
        assert registry.census(None, now) == Census(0, 0, 0, 1)
        registry.record([(_beat("A", "V2"), now + 1)])  # upgraded
        assert registry.census("V2", now + 1).drifted == 2
        record = registry.get("A")
        assert record is not None and not record.drifted("V2") and record.drifted("V3")


def test_an_older_registry_gets_the_copylist_column(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE clients (client_id TEXT PRIMARY KEY, platform TEXT NOT NULL, "
            "agent_version TEXT NOT NULL, groups TEXT NOT NULL, components TEXT NOT NULL, "
            "first_seen REAL NOT NULL, last_seen REAL NOT NULL, last_kind TEXT NOT NULL, "
            "provisioned_at REAL)"
        )
        old.execute("INSERT INTO clients VALUES ('OLD', 'nt', '0.1', '[]', '{}', 1, 1, 'hello', 1)")
    old.close()
    with StoreRegistry(DbSettings(str(path))) as registry:
        record = registry.get("OLD")
        assert record is not None and record.copylist_version is None
        registry.record([(_beat("OLD", "V1"), time.time())])
        assert [c.client_id for c in registry.drifted("V2")] == ["OLD"]


def test_one_storm_per_version_and_well_formed_upgrade_events() -> None:
    assert parse_event("CLISETUP_STARTCYCLE") == CLISETUP_STARTCYCLE
    for bad in ("clisetup_startcycle", "CLISETUP", "A_B_C"):
        with pytest.raises(ValueError, match="COMPONENT_EVENT"):
            parse_event(bad)
    first = storm_id_for(CLISETUP_STARTCYCLE, "V1")
    assert (
        first == storm_id_for(CLISETUP_STARTCYCLE, "V1") != storm_id_for(CLISETUP_STARTCYCLE, "V2")
    )
    assert first != storm_id_for(parse_event("SITESETUP_RUN"), "V1")
