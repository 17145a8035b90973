"""``setevnt-dispatcher report STORM_ID``: one storm as a self-contained HTML page.

For people who are not in Grafana: what was sent, how the clients answered, how long
they took and when the answers came. The page needs no network to be viewed: inline CSS,
inline SVG charts drawn by :mod:`dispatcher.report.charts`, no script, no web fonts.
Every string that comes from the ledger is escaped, since command details and halt
reasons carry text written by agents.

:func:`collect` reads the ledger; everything else is a pure function of its result.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from dispatcher.report import results
from dispatcher.report.charts import (
    histogram_svg,
    latency_text,
    status_colour,
    status_order,
    timeline_svg,
)
from dispatcher.store.ledger import (
    ERRORS,
    ClientResult,
    CommandRecord,
    Ledger,
    ReasonCount,
    StormRecord,
)
from dispatcher.store.ledger_rows import Status, StormState
from dispatcher.storms import progress
from schemas.messages import Reason

PERCENTILES = (50, 95, 99)
FAILED_SHOWN = 100  # clients listed with their reasons; `results` lists them all
DETAIL_SHOWN = 300
OUTPUT_SHOWN = 300  # the last characters of a client's output

STATUS_MEANINGS: Mapping[str, str] = {
    Status.DONE: "the client ran the event and reported success",
    Status.DEFERRED: "the client holds it until a running software distribution ends",
    Status.COALESCED: "not sent: the same event was still pending for this client",
    Status.SENT: "published, no answer yet",
    Status.PENDING_OFFLINE: "waiting in the client's queue: the client has not taken it",
    Status.WAITING_NODE: "the broker node of the client's queue is down: sent when it is back",
    Status.FAILED: "the client tried, and the component reported an error",
    Status.REJECTED: "the client refused it (invalid, expired signature, not allowed)",
    Status.EXPIRED: "its time to live ran out before the client ran it",
    Status.UNROUTABLE: "the broker has no queue for this client",
    Status.NACKED: "the broker refused to take it",
    Status.CANCELLED: "never sent: the storm was cancelled or halted first",
    Status.PLANNED: "not sent yet",
}
REASON_MEANINGS: Mapping[str, str] = {
    Reason.BAD_MSGPACK: "the agent could not decode the command's bytes",
    Reason.BAD_MESSAGE: "the command was not a valid setevnt command",
    Reason.UNSUPPORTED_VERSION: "the command's wire version is newer than the agent",
    Reason.WRONG_CLIENT: "the command was addressed to another client",
    Reason.EXPIRED: "its time to live ran out before the client ran it",
    Reason.UNKNOWN_COMPONENT: "the client does not know this component or event",
    Reason.WRONG_PLATFORM: "the component does not run on the client's platform",
    Reason.NOT_PERMITTED: "the agent does not allow it (e.g. forced commands)",
    Reason.SIGNAL_FAILED: "the component was signalled and reported an error",
    Reason.SIGNAL_TIMEOUT: "the component did not finish in time",
    Reason.BUSY: "a software distribution was running on the client",
    Reason.COALESCED: "the client ran the same event for an earlier command",
    Reason.BAD_SIGNATURE: "the command's signature did not verify against the agent's key",
    Reason.CLOCK_SKEW: "the client's clock is too far behind the dispatcher's",
}
STATE_MEANINGS: Mapping[str, str] = {
    StormState.RUNNING: "still sending commands or waiting for answers",
    StormState.DONE: "every command was sent and every answer the storm waits for has come",
    StormState.HALTED: "stopped early because too many commands failed (--max-errors)",
    StormState.CANCELLED: "stopped by an operator",
    StormState.FAILED: "the dispatcher gave up on it (see the reason)",
    StormState.INTERRUPTED: (
        "its dispatcher process stopped; `setevnt-dispatcher resume` sends the rest"
    ),
}

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #ffffff; color: #1a1a1a;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 24px 0 6px; border-bottom: 1px solid #d0d0d0; }
p { margin: 6px 0; max-width: 96ch; }
.lead { color: #333333; }
code { font-family: ui-monospace, "Cascadia Mono", Consolas, "DejaVu Sans Mono", monospace;
  font-size: 0.92em; background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
.state { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600;
  border: 1px solid #555555; background: #f4f4f4; }
.state.bad { border-color: #b34700; background: #fff1e6; color: #8a3600; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #e2e2e2;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.out code { display: block; white-space: pre-wrap; word-break: break-all; max-width: 36ch; }
td.detail { max-width: 40ch; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
  border: 1px solid #333333; vertical-align: -1px; }
.numbers { display: grid; grid-template-columns: repeat(auto-fit, minmax(96px, 1fr));
  gap: 8px; margin: 12px 0; }
.number { border: 1px solid #d0d0d0; border-radius: 6px; padding: 6px 10px; }
.number b { display: block; font-size: 1.3rem; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.number span { color: #444444; font-size: 0.85rem; white-space: nowrap; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0;
  font-family: inherit; background: #ffffff; }
svg .grid { stroke: #e4e4e4; } svg .axis { stroke: #444444; }
svg .tick { fill: #333333; font-size: 12px; } svg .label { fill: #1a1a1a; font-size: 14px; }
svg .mark { stroke: #1a1a1a; stroke-width: 1.5; stroke-dasharray: 5 4; }
svg .marklabel { fill: #1a1a1a; font-size: 13px; font-weight: 600; paint-order: stroke;
  stroke: #ffffff; stroke-width: 4px; }
.legend { list-style: none; padding: 0; margin: 8px 0; display: flex; flex-wrap: wrap;
  gap: 6px 18px; }
.empty { padding: 16px; border: 1px dashed #999999; background: #fafafa; max-width: none; }
footer { margin-top: 40px; color: #555555; font-size: 0.85rem; }
"""


@dataclass(frozen=True, slots=True)
class StormData:
    """Everything the page shows, as read from the ledger at ``generated_at``."""

    storm: StormRecord
    view: progress.StormView  # counts, latencies and the state as `status` shows them
    commands: Sequence[CommandRecord]
    generated_at: float
    reasons: Sequence[ReasonCount] = ()  # the failures by status and reason
    failures: Sequence[ClientResult] = ()  # the first FAILED_SHOWN failed clients

    @property
    def failed(self) -> int:
        return sum(r.commands for r in self.reasons)


def collect(ledger: Ledger, storm_id: str, now: float | None = None) -> StormData:
    storm = ledger.storm(storm_id)
    if storm is None:
        raise ValueError(f"no storm {storm_id} in {ledger.settings}")
    now = time.time() if now is None else now
    view = progress.from_ledger(storm, ledger.figures(storm_id), now)
    return StormData(
        storm,
        view,
        ledger.storm_commands(storm_id),
        now,
        reasons=ledger.reasons(storm_id, now, ERRORS),
        failures=list(ledger.results(storm_id, now, ERRORS, limit=FAILED_SHOWN)),
    )


def render(data: StormData) -> str:
    view = data.view
    title = f"Storm report: {view.event} on {view.targets} client(s)"
    # The pictures come before the details: a screenshot of the first screen tells the story.
    sections = [
        _header(data, title),
        _glance(view),
        _outcomes(view),
        _reasons(data),
        _latency(view),
        _timeline(data),
        _failed(data),
        _facts(data),
        _footer(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        "<body><main>\n" + "\n".join(sections) + "\n</main></body>\n</html>\n"
    )


# -- formatting ------------------------------------------------------------------------


def when_text(at: float | None, origin: float | None = None) -> str:
    if at is None:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    if origin is not None:
        text += f" (+{max(0.0, at - origin):.2f} s)"
    return text


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    """Table rows; headers and cells are trusted markup (callers escape what they insert)."""
    return "".join(f"<tr><th>{head}</th><td>{cell}</td></tr>" for head, cell in rows)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


# -- sections --------------------------------------------------------------------------


def _header(data: StormData, title: str) -> str:
    view = data.view
    bad = view.state in (
        StormState.HALTED,
        StormState.CANCELLED,
        StormState.FAILED,
        StormState.INTERRUPTED,
    )
    reason = f"<p><strong>Why:</strong> {_e(view.reason)}</p>" if view.reason else ""
    meaning = STATE_MEANINGS.get(view.state, "")
    return (
        f"<header><h1>{_e(title)}</h1>"
        '<p class="lead">A storm sends one event to many client machines at once: how the '
        "clients answered, how long they took and when the answers came, as the dispatcher's "
        "ledger had it when this page was made.</p>"
        f'<p>Storm <code>{_e(view.storm_id)}</code> is <span class="state'
        f'{" bad" if bad else ""}">{_e(view.state)}</span> {_e(meaning)}</p>{reason}</header>'
    )


def _glance(view: progress.StormView) -> str:
    figures = [
        ("targets", str(view.targets)),
        ("published", str(view.published)),
        ("done", str(view.acked)),
        ("errors", str(view.failed)),
        ("pending", str(view.pending)),
    ]
    if view.latencies:
        figures += [(f"latency p{p}", latency_text(_pct(view, p))) for p in PERCENTILES]
        figures.append(("latency max", latency_text(view.latencies[-1])))
    boxes = "".join(
        f'<div class="number"><span>{name}</span><b>{value}</b></div>' for name, value in figures
    )
    return f'<section aria-label="At a glance"><div class="numbers">{boxes}</div></section>'


def _facts(data: StormData) -> str:
    storm, view = data.storm, data.view
    finished = storm.finished_at
    took = f"{finished - storm.created_at:.2f} s" if finished is not None else "not finished"
    options = ", ".join(
        f"{_e(k)}={_e(v)}" for k, v in sorted(storm.options.items()) if v not in (None, False)
    )
    rows = [
        ("Storm id", f"<code>{_e(storm.storm_id)}</code>"),
        ("Component", _e(storm.component)),
        ("Event", f"<code>{_e(view.event)}</code>"),
        ("Target clients", f"{view.targets}"),
        ("Published", f"{view.published} (confirmed by the broker, or answered)"),
        ("Requested by", _e(storm.requested_by)),
        ("Started", when_text(storm.created_at)),
        ("First publish", when_text(storm.publishing_at, storm.created_at)),
        ("Last answer", when_text(view.last_acked_at, storm.created_at)),
        ("Finished", when_text(finished, storm.created_at)),
        ("Duration", took),
        ("State", _e(view.state) + (f": {_e(view.reason)}" if view.reason else "")),
        ("Options", options or "-"),
    ]
    return f'<section><h2>Storm details</h2><table class="facts">{_rows(rows)}</table></section>'


def _outcomes(view: progress.StormView) -> str:
    counts = {s: n for s, n in view.counts.items() if n}
    total = max(1, view.targets)
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:{status_colour(s)}"></span>'
        f'{_e(s)}</td><td class="num">{counts[s]}</td>'
        f'<td class="num">{100 * counts[s] / total:.1f}%</td>'
        f"<td>{_e(STATUS_MEANINGS.get(s, ''))}</td></tr>"
        for s in status_order(list(counts))
    )
    return (
        "<section><h2>Outcomes</h2>"
        "<p>What became of each client's command, counted by status.</p>"
        '<table class="outcomes"><thead><tr><th>Status</th><th class="num">Commands</th>'
        '<th class="num">Share of targets</th><th>Meaning</th></tr></thead>'
        f"<tbody>{rows}</tbody><tfoot><tr><th>All targets</th>"
        f'<td class="num">{view.targets}</td><td></td><td></td></tr></tfoot></table></section>'
    )


def _reasons(data: StormData) -> str:
    intro = (
        "<section><h2>Why commands failed</h2><p>The failed, rejected, expired, unroutable "
        "and nacked commands, counted by the reason their client (or the broker) gave; a "
        "command still pending past its expiry counts as expired.</p>"
    )
    if not data.reasons:
        return intro + '<p class="empty">No command failed.</p></section>'
    rows = "".join(
        f"<tr><td>{_reason_cell(r.status, r.reason)}</td><td>{_e(r.status)}</td>"
        f'<td class="num">{r.commands}</td>'
        f'<td class="num">{100 * r.commands / max(1, data.view.targets):.1f}%</td>'
        f'<td class="detail">{_e(_cut(r.example, DETAIL_SHOWN))}</td></tr>'
        for r in data.reasons
    )
    return (
        f'{intro}<table class="reasons"><thead><tr><th>Reason</th><th>Status</th>'
        '<th class="num">Commands</th><th class="num">Share of targets</th>'
        f"<th>One of their details</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _reason_cell(status: str, reason: str | None) -> str:
    if reason is None:
        return "no answer" if status == Status.EXPIRED else "-"
    meaning = REASON_MEANINGS.get(reason)
    return f"<code>{_e(reason)}</code>" + (f": {_e(meaning)}" if meaning else "")


def _failed(data: StormData) -> str:
    if not data.failures:
        return ""
    shown, total = len(data.failures), data.failed
    listed = f"All {total}" if shown >= total else f"The first {shown} of {total}"
    rows = "".join(
        f"<tr><td>{_e(f.client_id)}</td><td>{_e(f.status)}</td><td>{_e(f.reason or '-')}</td>"
        f'<td class="num">{_e(results.exit_code_text(f.exit_code))}</td>'
        f'<td class="num">{latency_text(f.latency)}</td>'
        f'<td class="detail">{_e(_cut(results.why(f), DETAIL_SHOWN))}</td>'
        f'<td class="out"><code>{_e(_tail(f.output, OUTPUT_SHOWN))}</code></td></tr>'
        for f in data.failures
    )
    statuses = ",".join(sorted(ERRORS))
    command = f"setevnt-dispatcher results {data.storm.storm_id} --status {statuses}"
    return (
        f"<section><h2>Failed clients</h2><p>{listed}, by client id; "
        f"<code>{_e(command)}</code> lists every one, with the whole detail and output.</p>"
        '<table class="failed"><thead><tr><th>Client</th><th>Status</th><th>Reason</th>'
        '<th class="num">Exit code</th><th class="num">Latency</th><th>Detail</th>'
        f"<th>Output (its end)</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _cut(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return _printable(text if len(text) <= limit else text[: limit - 3] + "...")


def _tail(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return _printable(text if len(text) <= limit else "..." + text[-(limit - 3) :])


def _printable(text: str) -> str:
    """Control and direction-changing characters as "?": an agent's text must not reorder
    or hide what the page shows around it."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


def _latency(view: progress.StormView) -> str:
    intro = (
        "<section><h2>Trigger latency</h2><p>From the dispatcher publishing a client's "
        "command to that client's final answer arriving back (delivery, any start delay or "
        "deferral, the component's signal, the way back). <strong>p95</strong>: 95% of the "
        "answered commands took at most this long.</p>"
    )
    if not view.latencies:
        return intro + (
            '<p class="empty">No latencies yet: no client has answered this storm, so there '
            "is no distribution to draw.</p></section>"
        )
    marks = {p: _pct(view, p) for p in PERCENTILES}
    figures = [("answered", str(len(view.latencies)))]
    figures += [(f"p{p}", latency_text(value)) for p, value in marks.items()]
    figures.append(("max", latency_text(view.latencies[-1])))
    listed = ", ".join(f"{name} <b>{value}</b>" for name, value in figures)
    return (
        f"{intro}<p>{listed}. Each bar counts the commands in its latency range; a grey bar "
        "on the right, if any, gathers the stragglers beyond the axis.</p>"
        f"{histogram_svg(view.latencies, marks)}</section>"
    )


def _pct(view: progress.StormView, p: int) -> float:
    value = view.percentile(p)
    assert value is not None  # only asked when there are latencies
    return value


def _timeline(data: StormData) -> str:
    origin = data.storm.created_at
    acks = [(c.acked_at - origin, c.status) for c in data.commands if c.acked_at is not None]
    intro = (
        "<section><h2>Outcome timeline</h2><p>When the clients' final answers (acks) "
        "arrived, counted per time interval and stacked by status.</p>"
    )
    unanswered = Counter(c.status for c in data.commands if c.acked_at is None)
    note = ""
    if unanswered:
        listed = ", ".join(f"{_e(s)} {unanswered[s]}" for s in status_order(list(unanswered)))
        note = (
            f"<p>{sum(unanswered.values())} command(s) have no final answer and are not on "
            f"the timeline: {listed}.</p>"
        )
    if not acks:
        return intro + (
            '<p class="empty">No answers yet: no client has sent a final ack for this '
            f"storm.</p>{note}</section>"
        )
    shown = Counter(status for _, status in acks)
    legend = "".join(
        f'<li><span class="swatch" style="background:{status_colour(s)}"></span>'
        f"{_e(s)} ({shown[s]})</li>"
        for s in status_order(list(shown))
    )
    return f'{intro}<ul class="legend">{legend}</ul>{timeline_svg(acks)}{note}</section>'


def _footer(data: StormData) -> str:
    return (
        f"<footer>Generated {when_text(data.generated_at)} by "
        f"<code>setevnt-dispatcher report {_e(data.storm.storm_id)}</code> from the "
        "dispatcher's ledger. Hover a bar for its exact numbers.</footer>"
    )
