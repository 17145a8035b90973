"""Storm and in-flight gauges, read from the ledger when Prometheus scrapes.

Storms run in their own processes (``setevnt-dispatcher storm``) and write the shared
ledger; the service reads it at scrape time, so the gauges are right whoever published.
Each scrape opens its own read-only connection: a store's connection is one thread's.
A storm ``running`` in the ledger whose process stopped heartbeating counts as
``interrupted``, as ``status`` shows it: it waits for ``resume``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher.store.db import Connection, DatabaseMissing, DbSettings, StoreError, connect
from dispatcher.store.ledger_rows import Status, StormState
from dispatcher.storms.progress import STALE_AFTER

STORM_STATES = tuple(StormState)
IN_FLIGHT = (Status.SENT, Status.DEFERRED, Status.PENDING_OFFLINE, Status.WAITING_NODE)
RECENT = 15 * 60  # a finished storm's progress stays on the dashboard this long


@dataclass(frozen=True, slots=True)
class _Reading:
    by_state: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    last_started: float = 0.0  # when the newest storm was created; 0: none yet


class LedgerMetrics(Collector):
    def __init__(self, database: DbSettings) -> None:
        self._database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        storms = GaugeMetricFamily(
            "setevnt_storms", "Storms in the ledger, by state.", labels=["state"]
        )
        commands = GaugeMetricFamily(
            "setevnt_storm_commands",
            "Commands of storms running or finished in the last 15 minutes, by status.",
            labels=["status"],
        )
        in_flight = GaugeMetricFamily(
            "setevnt_commands_in_flight", "Commands sent and neither answered nor expired."
        )
        started = GaugeMetricFamily(
            "setevnt_storm_last_started_timestamp_seconds",
            "When the newest storm in the ledger was created (0: none yet); it changes "
            "when a storm starts.",
        )
        reading = self._read(time.time())
        for state in sorted(set(STORM_STATES) | set(reading.by_state)):
            storms.add_metric([state], reading.by_state.get(state, 0))
        for status, count in sorted(reading.by_status.items()):
            commands.add_metric([status], count)
        in_flight.add_metric([], reading.in_flight)
        started.add_metric([], reading.last_started)
        yield storms
        yield commands
        yield in_flight
        yield started

    def _read(self, now: float) -> _Reading:
        try:
            db = connect(replace(self._database, busy_timeout=2), read_only=True)
        except (DatabaseMissing, StoreError):
            return _Reading()  # no ledger yet: nothing has been stormed
        with contextlib.closing(db):
            try:
                return self._query(db, now)
            except StoreError:  # tables not created yet, or busy past the timeout
                return _Reading()

    @staticmethod
    def _query(db: Connection, now: float) -> _Reading:
        by_state = dict(
            db.execute(
                "SELECT CASE WHEN state = 'running' AND heartbeat_at < ? THEN 'interrupted' "
                "ELSE state END, count(*) FROM storms GROUP BY 1",
                (now - STALE_AFTER,),
            )
        )
        by_status = dict(
            db.execute(
                "SELECT c.status, count(*) FROM commands c JOIN storms s USING (storm_id) "
                "WHERE s.state = 'running' OR s.finished_at >= ? GROUP BY c.status",
                (now - RECENT,),
            )
        )
        placeholders = ", ".join("?" for _ in IN_FLIGHT)
        (flying,) = db.execute(
            f"SELECT count(*) FROM commands WHERE status IN ({placeholders}) AND expires_at > ?",
            (*IN_FLIGHT, now),
        ).fetchone()
        (last_started,) = db.execute("SELECT max(created_at) FROM storms").fetchone()
        return _Reading(by_state, by_status, int(flying), float(last_started or 0.0))
