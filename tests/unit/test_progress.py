"""What a storm's progress says: cancelled commands apart from published ones, its pace."""

from __future__ import annotations

from collections.abc import Mapping

from dispatcher.storms import progress
from dispatcher.storms.progress import Pacer, StormView

T0 = 1_700_000_000.0


def view(counts: Mapping[str, int], *, state: str = "running", **more: object) -> StormView:
    fields: dict[str, object] = {
        "storm_id": "storm-x",
        "event": "CCIM32_STARTCYCLE",
        "state": state,
        "reason": None,
        "targets": sum(counts.values()),
        "counts": counts,
        "published": sum(
            n for s, n in counts.items() if s not in ("planned", "cancelled", "coalesced")
        ),
        "created_at": T0,
    }
    fields.update(more)
    return StormView(**fields)  # type: ignore[arg-type]


def test_cancelled_commands_are_not_counted_as_to_be_published() -> None:
    cancelled = view({"done": 24, "cancelled": 276, "failed": 1}, state="cancelled")
    line = progress.bar(cancelled)
    assert "published 25/25  cancelled 276  acked 24" in line
    assert "/301" not in line
    assert line.split("] ")[1].startswith("100% ")
    coalesced = view({"done": 6, "coalesced": 4}, state="done")
    assert "published 6/6  acked 6" in progress.bar(coalesced)


def test_a_running_storm_shows_its_average_pace_and_eta() -> None:
    running = view(
        {"done": 40, "failed": 10, "planned": 40, "sent": 10},
        publishing_at=T0 + 1,
        observed_at=T0 + 11,
    )
    pace = running.pace()
    assert pace is not None and pace.per_second == 5.0 and pace.eta == 10.0
    assert progress.bar(running).endswith("  5/s  eta 10s")
    assert "  settling 5/s  eta 10s (average since its first publish)" in progress.lines(running)
    shown = running.as_json()
    assert (shown["rate_per_second"], shown["eta_s"]) == (5.0, 10.0)


def test_a_finished_storm_has_no_pace() -> None:
    done = view({"done": 10}, state="done", publishing_at=T0, observed_at=T0 + 5)
    assert done.pace() is None
    assert "/s" not in progress.bar(done) and "eta" not in "".join(progress.lines(done))
    assert (done.as_json()["rate_per_second"], done.as_json()["eta_s"]) == (None, None)


def test_the_live_pace_follows_the_last_ten_seconds() -> None:
    pacer = Pacer()
    for at, settled in ((0.0, 0), (5.0, 100), (10.0, 200)):
        pace = pacer.observe(view({"done": settled, "planned": 1000 - settled}), at=at)
    assert pace is not None and pace.per_second == 20.0 and pace.eta == 40.0
    stalled = pacer.observe(view({"done": 200, "planned": 800}), at=25.0)
    assert stalled == progress.Pace(0.0, None), "nothing settled in the last ten seconds"
    assert progress.pace_text(stalled) == "0/s  eta -"
    assert pacer.observe(view({"done": 1000}, state="done"), at=26.0) is None


def test_eta_reads_in_minutes_and_hours() -> None:
    assert [progress.eta_text(s) for s in (4.2, 59.0, 125.0, 3720.0)] == [
        "5s",
        "59s",
        "2m05s",
        "1h02m",
    ]
