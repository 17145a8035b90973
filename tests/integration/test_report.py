"""`setevnt-dispatcher report` on a real storm, and the page rendered by headless Chromium.

A small storm runs through the project's own storm path against a simulated fleet; the
report written from its ledger must carry the storm's numbers, and Debian's `chromium`
must render it to a screenshot without a single console message.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from dispatcher.report.charts import latency_text
from tests.integration.fleet import Fleet
from tests.integration.test_storm import ids_file, sim_ids

pytestmark = pytest.mark.broker


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 60.0
# Chromium writes every message a page logs to stderr as `...:INFO:CONSOLE:<line>] "text",
# source: ...` (older builds: `CONSOLE(<line>)`), always at INFO whatever the page's level
# (console.error included), so the level cannot be told apart here. The report has no
# script at all, so any console message means something is wrong with the page.
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d+|Uncaught")


@pytest.fixture(scope="session")
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    problem = f"{CHROMIUM} is missing: apt-get install chromium"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs headless Chromium: {problem}", pytrace=False)
    pytest.skip(problem)


def screenshot(browser: Path, page: Path, png: Path) -> str:
    """Render ``page`` to ``png`` in a fresh, deleted-afterwards profile; Chromium's stderr."""
    with tempfile.TemporaryDirectory(prefix="setevnt-chromium-") as profile:
        argv = [
            str(browser),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={png}",
            "--window-size=1280,1600",
            page.resolve().as_uri(),
        ]
        # Its own session: on a timeout the renderer and GPU helpers go with the browser.
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"chromium took longer than {CHROMIUM_TIMEOUT} s") from None
    assert proc.returncode == 0, err
    return err


def console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def test_the_console_check_catches_a_page_that_logs_errors(chromium: Path, tmp_path: Path) -> None:
    """The check below must be able to fail: a page with a console error and an uncaught
    exception is caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><title>broken</title><p>broken</p>"
        "<script>console.error('deliberate'); undefinedFunction();</script>"
    )
    problems = console_problems(screenshot(chromium, page, tmp_path / "broken.png"))
    assert any('"deliberate"' in line for line in problems), problems
    assert any("Uncaught ReferenceError" in line for line in problems), problems


def ledger_numbers(db: Path, storm_id: str) -> tuple[Counter[str], list[float]]:
    """Counts per status and sorted latencies, straight from the database."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT status, latency FROM commands WHERE storm_id = ?", (storm_id,)
        ).fetchall()
    counts = Counter(status for status, _ in rows)
    return counts, sorted(latency for _, latency in rows if latency is not None)


def failed_clients(db: Path, storm_id: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT client_id FROM commands WHERE storm_id = ? AND status = 'failed'", (storm_id,)
        )
        return [client for (client,) in rows]


def test_report_of_a_real_storm_renders_cleanly(
    fleet: Fleet, chromium: Path, tmp_path: Path
) -> None:
    fleet.serve()  # its collector records the answers the storm reads
    fleet.simulate(40, "--provision", "--failure-rate", "0.2", "--seed", "5")
    targets = ids_file(tmp_path, sim_ids(40))
    _code, outcome = fleet.storm("CCIM32_STARTCYCLE", "--clients-file", targets, "--rate", "40/s")
    assert outcome["state"] == "done", outcome
    storm_id = outcome["storm_id"]

    out = tmp_path / "tmp" / "report.html"
    out.parent.mkdir()
    written = fleet.dispatcher("report", storm_id, "--db", str(fleet.db), "--out", str(out))
    assert written.returncode == 0, written.stderr
    html = out.read_text(encoding="utf-8")

    counts, latencies = ledger_numbers(fleet.db, storm_id)
    assert counts["done"] > 0 and counts["failed"] > 0, counts  # both colours on the chart
    for status, count in counts.items():
        assert f'{status}</td><td class="num">{count}</td>' in html, status
    # Why they failed, and who: the simulated component's failure, client by client.
    assert (
        "<tr><td><code>signal-failed</code>: the component was signalled and reported an "
        f'error</td><td>failed</td><td class="num">{counts["failed"]}</td>'
    ) in html
    assert f"<p>All {counts['failed']}, by client id;" in html
    for client in failed_clients(fleet.db, storm_id):
        assert f"<tr><td>{client}</td><td>failed</td><td>signal-failed</td>" in html, client
    assert html.count("simulated CCIM32 failure") == counts["failed"] + 1  # + the example
    for p in (50, 95, 99):
        expected = latencies[max(0, math.ceil(p / 100 * len(latencies)) - 1)]
        assert f"<span>latency p{p}</span><b>{latency_text(expected)}</b>" in html
    assert f"<span>latency max</span><b>{latency_text(latencies[-1])}</b>" in html
    assert storm_id in html and "on 40 client(s)" in html
    assert html.count("<svg ") == 2

    png = tmp_path / "report.png"
    stderr = screenshot(chromium, out, png)
    assert console_problems(stderr) == [], stderr
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(
        f"\nreport with {counts['failed']} failed clients: screenshot {png.stat().st_size:,} bytes"
    )


def test_report_of_an_unknown_storm_fails_with_a_message(fleet: Fleet, tmp_path: Path) -> None:
    fleet.register(["PC1"])  # the database exists, the storm does not
    out = tmp_path / "report.html"
    missing = fleet.dispatcher("report", "storm-nope", "--out", str(out))
    assert missing.returncode == 2
    assert "no storm storm-nope" in missing.stderr
    assert not out.exists()
