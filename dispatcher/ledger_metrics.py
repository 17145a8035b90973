"""Storm and in-flight gauges, read from the ledger when Prometheus scrapes.

Storms run in their own processes (``setevnt-dispatcher storm``) and write the shared
ledger; the service reads it at scrape time, so the gauges are right whoever published.
Each scrape opens its own read-only connection: SQLite connections are per thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STORM_STATES = ("running", "done", "halted", "cancelled", "failed", "interrupted")
IN_FLIGHT = ("sent", "deferred", "pending-offline")
RECENT = 15 * 60  # a finished storm's progress stays on the dashboard this long


class LedgerMetrics(Collector):
    def __init__(self, path: str) -> None:
        self._path = path

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
        by_state, by_status, flying = self._read(time.time())
        for state in sorted(set(STORM_STATES) | set(by_state)):
            storms.add_metric([state], by_state.get(state, 0))
        for status, count in sorted(by_status.items()):
            commands.add_metric([status], count)
        in_flight.add_metric([], flying)
        yield storms
        yield commands
        yield in_flight

    def _read(self, now: float) -> tuple[dict[str, int], dict[str, int], int]:
        try:
            db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            return {}, {}, 0  # no ledger yet: nothing has been stormed
        with contextlib.closing(db):
            try:
                return self._query(db, now)
            except sqlite3.Error:  # tables not created yet, or busy past the timeout
                return {}, {}, 0

    @staticmethod
    def _query(db: sqlite3.Connection, now: float) -> tuple[dict[str, int], dict[str, int], int]:
        by_state = dict(db.execute("SELECT state, count(*) FROM storms GROUP BY state"))
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
        return by_state, by_status, int(flying)
