"""A batch of hostile messages, judged, and the figures tables it adds to.

:func:`judge` runs the genuine traffic after a batch (it also queues behind the batch,
so the snapshot after it sees everything the batch caused), takes the snapshot and
lists what broke; :func:`render` makes the tables the issue's closing note quotes:
messages sent per kind and sender, consumers alive after, series and ledger rows
before and after, and the genuine command's and request's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.hostile.observe import NEW_NAMES, Allowance, Snapshot, foreign_values, problems
from tests.hostile.site import REQUEST_DONE, Genuine, Sent, Site

NOTHING = Allowance()


@dataclass(frozen=True, slots=True)
class Batch:
    name: str
    sent: tuple[Sent, ...]
    before: Snapshot
    after: Snapshot
    genuine: Genuine
    allowed: Allowance  # what accepted requests and the genuine traffic account for
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()  # figures worth quoting that are no rule (replies, ...)

    def report(self) -> str:
        """The batch's failure message: every broken rule, not only the first."""
        return f"{self.name}: " + "\n  ".join(["", *self.problems])


def judge(
    site: Site,
    name: str,
    before: Snapshot,
    sent: Sequence[Sent],
    accepted: Callable[[], Allowance] = lambda: NOTHING,
    checks: Callable[[], list[str]] | None = None,
    notes: Callable[[], list[str]] | None = None,
) -> Batch:
    """Run the genuine traffic, then compare. Asked once the genuine traffic is through
    (so every reply to the batch is in): ``accepted``, what the requests the dispatcher
    accepted during the batch may add; ``checks``, the batch's own rules; ``notes``."""
    genuine = site.genuine()
    after = site.snapshot()
    allowed = accepted() + genuine.added
    found = problems(before, after, allowed)
    for process, alive in after.alive.items():
        if not alive:
            running = site.serve if process == "serve" else site.agent
            found.append(f"{process} exited {running.proc.returncode}: {running.output[-1500:]}")
    if checks is not None:
        found += checks()
    if genuine.command != "done":
        found.append(f"genuine command: {genuine.command}")
    if genuine.request != REQUEST_DONE:
        found.append(f"genuine request: {genuine.request}")
    if not genuine.worked:
        found += site.why_stuck()
    told = tuple(notes()) if notes is not None else ()
    # Allowed, but worth a look: a fixed name a fix added, or a value a peer chose.
    allowed_names = {
        key: values
        for key, values in foreign_values(before.series, after.series).items()
        if len(values) <= NEW_NAMES
    }
    if allowed_names:
        shown = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(allowed_names.items()))
        told += (f"new label values outside the closed sets: {shown}",)
    return Batch(name, tuple(sent), before, after, genuine, allowed, tuple(found), told)


# -- the tables -------------------------------------------------------------------------


def render(batches: Sequence[Batch]) -> str:
    lines = [
        "Messages sent, per kind and sender",
        "",
        "| batch | sender | kind | sent | confirmed | refused by the broker |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for batch in batches:
        for s in batch.sent:
            lines.append(
                f"| {batch.name} | {s.sender} | {s.kind} | {s.sent} | {s.confirmed} | {s.refused} |"
            )
    lines += [
        "",
        "After each batch (the genuine command and request included)",
        "",
        "| batch | consumers (acks, fleet, requests, agent) | serve, agent | metric series "
        "| label values from messages | ledger commands (may add) | ledger storms (may add) "
        "| published counted (may add) | genuine command | genuine request | serve RSS MB |",
        "| --- | --- | --- | --- | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_row(batch) for batch in batches]
    for batch in batches:
        if batch.notes:
            lines += ["", f"{batch.name}: notes"]
            lines += [f"- {note}" for note in batch.notes]
        if batch.problems:
            lines += ["", f"{batch.name}: what broke"]
            lines += [f"- {problem}" for problem in batch.problems]
    return "\n".join(lines) + "\n"


def _row(batch: Batch) -> str:
    before, after, allowed = batch.before, batch.after, batch.allowed
    consumers = ", ".join(str(n) for n in after.consumers.values())
    alive = ", ".join("up" if up else "DEAD" for up in after.alive.values())
    foreign = sum(len(v) for v in foreign_values(before.series, after.series).values())
    published = after.published - before.published
    rss = " -> ".join(f"{s.rss_kb.get('serve', 0) / 1024:.0f}" for s in (before, after))
    return (
        f"| {batch.name} | {consumers} | {alive} | {len(before.series)} -> {len(after.series)} "
        f"| {foreign} | {before.commands} -> {after.commands} (+{allowed.commands}) "
        f"| {before.storms} -> {after.storms} (+{allowed.storms}) "
        f"| {published:g} ({allowed.published}) | {batch.genuine.command} "
        f"| {batch.genuine.request} | {rss} |"
    )


def conclude(figures: list[Batch], batch: Batch) -> None:
    """Keep the batch for the module's tables, print its own, fail on what broke."""
    figures.append(batch)
    print(f"\n{render([batch])}")
    assert not batch.problems, batch.report()
