"""The storm report page, rendered from hand-built ledger records (no broker, no browser)."""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence

import pytest

from dispatcher.report import page as report
from dispatcher.report.charts import (
    histogram_svg,
    latency_bins,
    latency_text,
    nice_step,
    timeline_svg,
)
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import (
    ClientResult,
    CommandRecord,
    Ledger,
    ReasonCount,
    StormFigures,
    StormRecord,
)
from dispatcher.storms import progress
from schemas.messages import Ack

T0 = 1_700_000_000.0
HOSTILE = "<script>alert('x')</script> & \"quoted\""


def storm_record(state: str = "done", reason: str | None = None, **changes: object) -> StormRecord:
    fields: dict[str, object] = {
        "storm_id": "storm-20231114-221320-abc123",
        "component": "CCIM32",
        "event": "STARTCYCLE",
        "options": {"max_in_flight": "50", "rate": None, "fast": False},
        "targets": 14,
        "state": state,
        "reason": reason,
        "requested_by": "ops@site",
        "created_at": T0,
        "finished_at": T0 + 4.0 if state != "running" else None,
        "heartbeat_at": T0 + 4.0,
        "owner": "pid 1 on some-other-host",
        "cancel_requested": False,
        "publishing_at": T0 + 0.1,
    }
    fields.update(changes)
    return StormRecord(**fields)  # type: ignore[arg-type]


def command(n: int, status: str, latency: float | None = None) -> CommandRecord:
    sent = T0 + 0.1 + n * 0.2
    return CommandRecord(
        command_id=f"cmd{n}",
        storm_id="storm-20231114-221320-abc123",
        client_id=f"PC{n:03d}",
        component="CCIM32",
        event="STARTCYCLE",
        status=status,
        sent_at=sent if status not in ("planned", "cancelled") else None,
        acked_at=sent + latency if latency is not None else None,
        latency=latency,
    )


def figures_of(commands: Sequence[CommandRecord]) -> StormFigures:
    """What ``Ledger.figures`` reads from these rows."""
    sent = [c.sent_at for c in commands if c.sent_at is not None]
    acked = [c.acked_at for c in commands if c.acked_at is not None]
    return StormFigures(
        counts=dict(Counter(c.status for c in commands)),
        published=sum(1 for c in commands if c.sent_at or c.acked_at),
        latencies=sorted(c.latency for c in commands if c.latency is not None),
        first_sent_at=min(sent, default=None),
        last_sent_at=max(sent, default=None),
        last_acked_at=max(acked, default=None),
    )


def page(storm: StormRecord, commands: Sequence[CommandRecord]) -> str:
    view = progress.from_ledger(storm, figures_of(commands), now=T0 + 5)
    return report.render(report.StormData(storm, view, commands, T0 + 60))


def mixed_commands() -> list[CommandRecord]:
    done = [command(n, "done", 0.010 * (n + 1)) for n in range(10)]
    return [
        *done,
        command(10, "failed", 0.250),
        command(11, "failed", 1.5),
        command(12, "pending-offline"),
        command(13, "cancelled"),
    ]


def nearest_rank(values: list[float], p: int) -> float:
    return sorted(values)[max(0, math.ceil(p / 100 * len(values)) - 1)]


def cell(value: int) -> str:
    return f'<td class="num">{value}</td>'


def test_the_page_shows_the_storms_numbers() -> None:
    commands = mixed_commands()
    html = page(storm_record("halted", "2 errors exceed --max-errors 1"), commands)
    for status, count in {"done": 10, "failed": 2, "pending-offline": 1, "cancelled": 1}.items():
        assert re.search(rf"{re.escape(status)}</td>{re.escape(cell(count))}", html), status
    latencies = [c.latency for c in commands if c.latency is not None]
    for p in (50, 95, 99):
        assert f"<span>latency p{p}</span><b>{latency_text(nearest_rank(latencies, p))}</b>" in html
    assert f"<span>latency max</span><b>{latency_text(1.5)}</b>" in html
    assert "answered <b>12</b>" in html
    glance = {"targets": 14, "published": 13, "done": 10, "errors": 2, "pending": 1}
    for name, value in glance.items():
        assert f"<span>{name}</span><b>{value}</b>" in html, name
    assert "storm-20231114-221320-abc123" in html
    assert "CCIM32_STARTCYCLE" in html
    assert "on 14 client(s)" in html
    assert "2023-11-14 22:13:20 UTC" in html  # started
    assert "(+4.00 s)" in html  # finished, after its start
    assert "halted" in html and "2 errors exceed --max-errors 1" in html
    assert "2 command(s) have no final answer" in html


def test_each_chart_is_an_inline_svg_with_labelled_axes() -> None:
    html = page(storm_record(), mixed_commands())
    assert html.count("<svg ") == 2
    assert "Trigger latency distribution</title>" in html
    assert "Outcome timeline</title>" in html
    assert "Trigger latency (ms)" in html and ">Commands</text>" in html
    assert "Time since the storm started (s)" in html and "Acks per " in html


def test_every_ledger_string_is_escaped() -> None:
    commands = [*mixed_commands(), command(14, f"odd{HOSTILE}", 0.05)]
    storm = storm_record(
        "failed",
        HOSTILE,
        requested_by=HOSTILE,
        options={"note": HOSTILE, HOSTILE: 1},
        targets=15,
    )
    html = page(storm, commands)
    assert "<script" not in html
    assert '"quoted"' not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in html


def test_the_page_is_self_contained() -> None:
    html = page(storm_record(), mixed_commands())
    for reference in ("http://", "https://", "<script", "src=", "@import", "url(", "<link"):
        assert reference not in html, reference
    assert "<style>" in html
    assert '<meta name="color-scheme" content="light">' in html


def test_a_storm_without_answers_renders_and_says_so() -> None:
    commands = [command(n, "planned") for n in range(3)]
    storm = storm_record("running", targets=3, heartbeat_at=T0 + 5)
    html = page(storm, commands)
    assert "<svg" not in html
    assert "No latencies yet" in html and "No answers yet" in html
    assert "running" in html and "not finished" in html
    assert "3 command(s) have no final answer" in html


def test_a_storm_with_no_commands_at_all_renders() -> None:
    html = page(storm_record("cancelled", targets=0), [])
    assert "No answers yet" in html and "<svg" not in html


def test_stragglers_go_to_one_overflow_bar() -> None:
    latencies = sorted([0.1 + 0.001 * n for n in range(200)] + [30.0, 60.0])
    bins = latency_bins(latencies, nearest_rank(latencies, 95), nearest_rank(latencies, 99))
    assert bins.overflow == 2
    assert sum(bins.counts) == 200
    assert bins.end < 1.0, "the axis shows the bulk, not the stragglers"
    even = latency_bins([0.1, 0.2, 0.3], 0.3, 0.3)
    assert even.overflow == 0 and sum(even.counts) == 3


def test_degenerate_charts_still_draw() -> None:
    assert latency_bins([0.0, 0.0], 0.0, 0.0).counts == [2]
    tight = latency_bins([0.5, 0.5], 0.5, 0.5)
    assert tight.counts == [2] and tight.start == pytest.approx(0.5)
    for values in ([0.0], [0.5, 0.5]):
        svg = histogram_svg(values, {50: values[0], 95: values[0], 99: values[0]})
        assert "<rect" in svg and "nan" not in svg
    assert "<rect" in timeline_svg([(0.0, "done")])
    assert [nice_step(x) for x in (0.013, 0.3, 7, 40)] == [0.02, 0.5, 10, 50]


def test_collect_reads_the_ledger(store_db: DbSettings) -> None:
    storm = storm_record(targets=2)
    planned = [command(0, "planned"), command(1, "planned")]
    with Ledger(store_db) as ledger:
        ledger.create_storm(storm, planned)
        # An ack as the collector records it: done 0.5 s after the command was issued.
        ack = Ack("cmd0", "PC000", "done", T0 + 0.5, "t", issued_at=T0)
        ledger.record_answers([(ack, T0 + 0.5)])
        data = report.collect(ledger, storm.storm_id, now=time.time())
        with pytest.raises(ValueError, match="no storm nope"):
            report.collect(ledger, "nope")
    assert data.view.counts == {"done": 1, "planned": 1}
    assert [c.command_id for c in data.commands] == ["cmd0", "cmd1"]
    assert "<span>latency p50</span><b>500 ms</b>" in report.render(data)


def failure(n: int, **changes: object) -> ClientResult:
    fields: dict[str, object] = {
        "command_id": f"cmd{n}",
        "storm_id": "storm-20231114-221320-abc123",
        "client_id": f"PC{n:03d}",
        "component": "CCIM32",
        "event": "STARTCYCLE",
        "status": "failed",
        "recorded_status": "failed",
        "reason": "signal-failed",
        "detail": "exec: ccim.exe exited with status 3",
        "exit_code": 3,
        "output": "line one\nline two",
        "latency": 0.25,
        "acked_at": T0 + 1,
        "expires_at": T0 + 3600,
    }
    fields.update(changes)
    return ClientResult(**fields)  # type: ignore[arg-type]


def failures_page(reasons: list[ReasonCount], failures: list[ClientResult]) -> str:
    commands = mixed_commands()
    storm = storm_record()
    view = progress.from_ledger(storm, figures_of(commands), now=T0 + 5)
    data = report.StormData(storm, view, commands, T0 + 60, reasons=reasons, failures=failures)
    return report.render(data)


def test_the_page_says_why_commands_failed_and_which_clients() -> None:
    reasons = [
        ReasonCount("failed", "signal-failed", 2, "exec: ccim.exe exited with status 3"),
        ReasonCount("expired", None, 1, None),
    ]
    failures = [
        failure(10),
        failure(11, exit_code=-1073741819, output=None, detail="crashed"),
        failure(12, status="expired", recorded_status="sent", reason=None, detail=None),
    ]
    html = failures_page(reasons, failures)
    assert (
        "<tr><td><code>signal-failed</code>: the component was signalled and reported an "
        'error</td><td>failed</td><td class="num">2</td><td class="num">14.3%</td>'
        '<td class="detail">exec: ccim.exe exited with status 3</td></tr>'
    ) in html
    assert '<tr><td>no answer</td><td>expired</td><td class="num">1</td>' in html
    assert "<p>All 3, by client id;" in html
    assert (
        "<tr><td>PC010</td><td>failed</td><td>signal-failed</td>"
        '<td class="num">3</td><td class="num">250 ms</td>'
        '<td class="detail">exec: ccim.exe exited with status 3</td>'
        '<td class="out"><code>line one\nline two</code></td></tr>'
    ) in html
    assert '<td class="num">-1073741819 (0xC0000005)</td>' in html
    assert "no answer before it expired (the ledger has it sent)" in html
    assert "--status expired,failed,nacked,rejected,unroutable</code>" in html


def test_a_storm_without_failures_says_so_and_lists_nobody() -> None:
    html = failures_page([], [])
    assert "No command failed." in html
    assert "Failed clients" not in html


def test_only_the_first_hundred_failed_clients_are_listed() -> None:
    failures = [failure(n) for n in range(report.FAILED_SHOWN)]
    html = failures_page([ReasonCount("failed", "signal-failed", 250, None)], failures)
    assert "<p>The first 100 of 250, by client id;" in html
    assert html.count("<tr><td>PC0") == 100


def test_agents_text_in_the_failures_is_escaped_and_cannot_turn_the_page() -> None:
    hostile = failure(
        10,
        detail=f"{HOSTILE}\u202eexe.txt",
        output=f"\x1b[31m{HOSTILE}\x00",
        reason=HOSTILE,
    )
    html = failures_page([ReasonCount("failed", HOSTILE, 1, HOSTILE)], [hostile])
    assert "<script" not in html and '"quoted"' not in html
    assert "\u202e" not in html and "\x1b" not in html and "\x00" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;?exe" in html


def test_collect_reads_the_failures_with_exit_codes_and_output(store_db: DbSettings) -> None:
    storm = storm_record(targets=3)
    planned = [command(n, "planned") for n in range(3)]
    with Ledger(store_db) as ledger:
        ledger.create_storm(storm, planned)
        failed = Ack(
            "cmd1", "PC001", "failed", T0 + 0.5, "t", issued_at=T0, reason="signal-failed",
            detail="exited 3", exit_code=3, output="x" * 2040 + "\nERROR",
        )  # fmt: skip
        done = Ack("cmd0", "PC000", "done", T0 + 0.5, "t", issued_at=T0)
        ledger.record_answers([(failed, T0 + 0.5), (done, T0 + 0.5)])
        data = report.collect(ledger, storm.storm_id, now=time.time())
    assert data.reasons == [ReasonCount("failed", "signal-failed", 1, "exited 3")]
    assert [(f.client_id, f.exit_code) for f in data.failures] == [("PC001", 3)]
    assert data.failures[0].output == "x" * 2040 + "\nERROR"
