"""CopyListVersion drift gauges, read from the database when Prometheus scrapes.

Like :mod:`dispatcher.service.ledger_metrics`: the site's version can change from any terminal
(``site set-version``) and heartbeats arrive all the time, so the gauges are computed
from the database at scrape time, over a read-only connection of the scrape's own.
Every series is exported (as 0) before there is anything to count.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher.service.drift import storm_id_for
from dispatcher.store.db import Connection, DatabaseMissing, DbSettings, StoreError, connect
from dispatcher.store.ledger import Status
from dispatcher.store.registry import Census, census
from dispatcher.store.site import COPYLIST_VERSION
from schemas.catalog import ComponentEvent

_NOTHING: tuple[Census, dict[str, int]] = (Census(0, 0, 0, 0), {})


class DriftMetrics(Collector):
    def __init__(self, database: DbSettings, offline_after: float, event: ComponentEvent) -> None:
        self._database = database
        self._offline_after = offline_after
        self._event = event

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drifted = GaugeMetricFamily(
            "setevnt_clients_drifted",
            "Clients reporting a CopyListVersion other than the site's, online or offline.",
            labels=["state"],
        )
        current = GaugeMetricFamily(
            "setevnt_clients_site_version", "Clients reporting the site's CopyListVersion."
        )
        upgrades = GaugeMetricFamily(
            "setevnt_upgrade_commands",
            "Commands of the remediation storm of the site's CopyListVersion, by status.",
            labels=["status"],
        )
        fleet, by_status = self._read(time.time())
        drifted.add_metric(["online"], fleet.drifted_online)
        drifted.add_metric(["offline"], fleet.drifted_offline)
        current.add_metric([], fleet.current)
        for status in Status:
            upgrades.add_metric([status.value], by_status.get(status.value, 0))
        yield drifted
        yield current
        yield upgrades

    def _read(self, now: float) -> tuple[Census, dict[str, int]]:
        try:
            db = connect(replace(self._database, busy_timeout=2), read_only=True)
        except (DatabaseMissing, StoreError):
            return _NOTHING  # no database yet: no client has been heard from
        with contextlib.closing(db):
            try:
                return self._query(db, now)
            except StoreError:  # tables not created yet, or busy past the timeout
                return _NOTHING

    def _query(self, db: Connection, now: float) -> tuple[Census, dict[str, int]]:
        row = db.execute("SELECT value FROM site WHERE name = ?", (COPYLIST_VERSION,)).fetchone()
        if row is None:
            return _NOTHING
        version = str(row[0])
        fleet = census(db, version, now, self._offline_after)
        by_status = dict(
            db.execute(
                "SELECT status, count(*) FROM commands WHERE storm_id = ? GROUP BY status",
                (storm_id_for(self._event, version),),
            ).fetchall()
        )
        return fleet, by_status
