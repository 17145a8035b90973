"""Connections cut mid-storm: nothing lost, nothing run twice, everything answered.

A TCP proxy sits between the broker and both the simulated fleet (2,000 clients) and
the storm's dispatcher; the dispatcher service's collector talks to the broker directly.
While the storm publishes, the proxy cuts every connection through it, several times.
The storm's publisher re-sends what the broker had not confirmed (same command ids), the
fleet's lanes reconnect and get back what they had not acked, and agents answer what
they already ran from their journal instead of running it again.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.harness import AckTap, finished_runs, start_storm, wait_finished
from tests.faults.proxy import Proxy
from tests.faults.tally import ledger, run_records, tally
from tests.integration.fleet import Fleet, storm_id_of
from tests.integration.helpers import Process, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLIENTS = 2000
CUTS = 3
RATE = "400/s"  # ~5 s of publishing: long enough to cut it three times


def test_connection_cuts_during_a_storm_lose_nothing(
    amqp_url: str, vhost: str, tmp_path: Path
) -> None:
    record = tmp_path / "runs.jsonl"
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"SIM{n:05d}\n" for n in range(CLIENTS)))
    proxy = Proxy()
    behind = Fleet(proxy.url(urllib.parse.quote(vhost, safe="")), tmp_path)
    direct = Fleet(amqp_url, tmp_path)  # same database: the service records what it collects
    tap = AckTap(amqp_url)
    storm: Process | None = None
    cuts: list[tuple[int, int]] = []  # (finished runs when cut, connections cut)
    try:
        service = direct.serve()
        fleet = behind.simulate(CLIENTS, "--record", str(record))  # provisioned by the service
        storm = start_storm(behind, targets, "--rate", RATE, "--delivery-wait", "3s")
        started = time.monotonic()
        for n in range(1, CUTS + 1):
            due = n * CLIENTS // (CUTS + 1)
            wait_finished(record, due, 60)
            cuts.append((finished_runs(record), proxy.cut()))
        assert storm.proc.wait(timeout=90) == 0, storm.output[-3000:]
        took = time.monotonic() - started
        storm_id = storm_id_of(storm.lines)
        assert storm_id is not None, storm.output
        planned = ledger(direct.db, storm_id).planned
        finals = tap.wait_finals(set(planned), timeout=60, alive=[service, fleet])
        # The service's collector recorded every outcome too (it was never cut).
        wait_for(lambda: len(ledger(direct.db, storm_id).finals()) == CLIENTS, 30, "the ledger")
    finally:
        if storm is not None:
            storm.terminate()
        behind.stop()
        direct.stop()
        proxy.close()
        tap.close()
    view = ledger(direct.db, storm_id)
    result = (
        tally(
            f"{CUTS} connection cuts during a storm of {CLIENTS} simulated clients",
            sent=view.planned,
            confirmed=view.confirmed,
            acked=finals,
            runs=run_records(record),
            duplicate_acks=tap.finals()[1],
        )
        .with_notes(
            cuts=", ".join(f"{c} connections after {r} runs" for r, c in cuts),
            proxy_connections_made=proxy.connections_made,
            storm_took=f"{took:.1f} s",
            ledger=", ".join(
                f"{s} {n}" for s, n in sorted(Counter(view.statuses.values()).items())
            ),
        )
        .show()
    )
    assert all(count > 0 for _runs, count in cuts), "every cut cut something"
    assert (result.sent, result.confirmed, result.acked) == (CLIENTS, CLIENTS, CLIENTS)
    assert (result.lost, result.duplicate_executions) == (0, 0), result.table()
    assert result.statuses == {"done": CLIENTS}
    assert result.executed == CLIENTS
    assert view.finals() == {c: "done" for c in view.planned}
