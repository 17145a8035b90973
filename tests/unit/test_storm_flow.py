"""Storm options and the flow's window, errors and fast-lane bookkeeping, without a broker.

The flow is pika-free: it is fed confirms and answers here the way the publisher and the
ledger's answers would, and writes to a real (temporary) ledger.
"""

from __future__ import annotations

import time

import pytest

from broker.publisher import Outcome
from dispatcher.store.ledger import Ledger, LedgerWriter, StormAnswer
from dispatcher.storms.flow import FlowLimits, Order, StormFlow, Target
from dispatcher.storms.progress import StormView, bar
from dispatcher.storms.storm import Limit, StormOptions, parse_duration, parse_rate, spread_offset
from schemas.codec import decode
from schemas.messages import Command


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("250ms", 0.25), ("5m", 300), ("2h", 7200), ("1.5d", 129600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_rates_limits_and_options() -> None:
    assert parse_rate("200/s") == 200 and parse_rate("600/m") == 10 and parse_rate("50") == 50
    for bad in ("fast", "0/s", "-3"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert Limit.parse("5%").of(200) == 10 and Limit.parse("7").of(200) == 7
    assert str(Limit.parse("12.5%")) == "12.5%"
    with pytest.raises(ValueError):
        Limit.parse("101%")
    with pytest.raises(ValueError, match="longer than --spread"):
        StormOptions(spread=600, ttl=300)
    options = StormOptions(rate=20, max_errors=Limit(5, True), spread=30, fast=True)
    assert StormOptions.from_json(options.to_json()) == options


def test_spread_offsets_are_deterministic_and_spread() -> None:
    offsets = [spread_offset("storm-a", f"PC{n}", 60.0) for n in range(500)]
    assert offsets == [spread_offset("storm-a", f"PC{n}", 60.0) for n in range(500)]
    assert all(0 <= o < 60 for o in offsets)
    assert min(offsets) < 3 and max(offsets) > 57, "the whole spread is used"
    assert offsets != [spread_offset("storm-b", f"PC{n}", 60.0) for n in range(500)]
    assert spread_offset("storm-a", "PC1", 0) == 0


class Feed:
    """Stands in for the ledger's answers: those the test hands over."""

    def __init__(self) -> None:
        self.acks: list[StormAnswer] = []

    def drain(self) -> list[StormAnswer]:
        acks, self.acks = self.acks, []
        return acks


def make_flow(
    ledger: Ledger, count: int, *, window: int = 2, errors: int | None = None, fast: bool = False
) -> tuple[StormFlow, Feed, LedgerWriter]:
    feed, writer = Feed(), LedgerWriter(ledger.settings, "storm-t")
    flow = StormFlow(
        Order("storm-t", "CCIM32", "STARTCYCLE", False, False, "t", persistent=not fast),
        [Target(f"c{n}", f"PC{n}") for n in range(count)],
        FlowLimits(window, errors, None, delivery_wait=0.05, ttl=60, max_errors_text="2"),
        writer,
        feed,  # type: ignore[arg-type]
    )
    return flow, feed, writer


def ack(command_id: str, status: str = "done") -> StormAnswer:
    reason = "signal-failed" if status == "failed" else None
    return StormAnswer(command_id, status, status != "deferred", time.time(), 0.1, reason, None)


def test_the_window_holds_unanswered_commands(ledger: Ledger) -> None:
    flow, feed, writer = make_flow(ledger, 5)
    sent = flow.take(100)
    assert [m.key for m in sent] == ["c0", "c1"], "two in flight at most"
    command = decode(sent[0].body, Command)
    assert (command.storm_id, command.client_id, sent[0].persistent) == ("storm-t", "PC0", True)
    for message in sent:
        flow.on_outcome(message, Outcome.SENT)
    assert flow.take(100) == []
    feed.acks.append(ack("c0"))
    assert [m.key for m in flow.take(100)] == ["c2"]
    time.sleep(0.06)  # c1's client does not answer within the delivery wait
    flow.tick()
    assert flow.counts["pending-offline"] == 1 and flow.window == 1
    assert [m.key for m in flow.take(100)] == ["c3"], "c1 no longer holds a slot"
    writer.close()


def test_errors_beyond_the_limit_halt_and_cancel_the_rest(ledger: Ledger) -> None:
    flow, feed, writer = make_flow(ledger, 10, window=10, errors=2)
    for message in flow.take(3):
        flow.on_outcome(message, Outcome.SENT)
    feed.acks += [ack("c0", "failed"), ack("c1", "failed")]
    flow.tick()
    assert flow.state == "running"
    feed.acks.append(ack("c2", "failed"))
    flow.tick()
    assert flow.state == "halted"
    assert flow.reason is not None and "3 errors exceed --max-errors 2" in flow.reason
    assert flow.counts["cancelled"] == 7 and flow.finished()
    writer.close()


def test_a_suspended_storm_stops_publishing_and_cancels_nothing(ledger: Ledger) -> None:
    """What a stopping service does to its request storms: resumable, not cancelled."""
    flow, _feed, writer = make_flow(ledger, 10, window=10)
    for message in flow.take(3):
        flow.on_outcome(message, Outcome.SENT)
    flow.suspend_requested = "the service stopped"
    flow.tick()
    assert (flow.state, flow.reason) == ("interrupted", "the service stopped")
    assert flow.finished() and flow.take(100) == []
    assert flow.counts["planned"] == 7 and flow.counts["cancelled"] == 0
    flow.conclude()
    assert flow.state == "interrupted"
    writer.close()


def test_fast_lane_resends_what_a_broker_restart_may_have_lost(ledger: Ledger) -> None:
    flow, feed, writer = make_flow(ledger, 3, window=10, fast=True)
    messages = flow.take(10)
    assert all(not m.persistent for m in messages)
    for message in messages:
        flow.on_outcome(message, Outcome.SENT)
    feed.acks.append(ack("c1"))
    flow.tick()
    flow.reconnected()  # the publisher had to reconnect
    assert sorted(m.key for m in flow.take(10)) == ["c0", "c2"], "all but the answered one"
    assert (flow.resent, flow.published) == (2, 3)
    writer.close()


def test_an_answer_that_comes_after_the_reconnect_cancels_the_resend(ledger: Ledger) -> None:
    flow, feed, writer = make_flow(ledger, 2, window=10, fast=True)
    for message in flow.take(10):
        flow.on_outcome(message, Outcome.SENT)
    flow.reconnected()  # both unanswered: both queued again ...
    feed.acks.append(ack("c0"))  # ... and then c0's answer reaches the ledger
    assert [m.key for m in flow.take(10)] == ["c1"], "c0 ran: not sent again"
    assert flow.window == 1
    feed.acks.append(ack("c1"))
    flow.tick()
    assert flow.window == 0 and flow.finished(), "nothing holds the window"
    writer.close()


def test_progress_bar_counts() -> None:
    view = StormView(
        "s",
        "CCIM32_STARTCYCLE",
        "running",
        None,
        10,
        {"done": 4, "sent": 2, "failed": 1, "planned": 3},
        7,
    )
    assert (view.acked, view.failed, view.pending, view.unsent) == (4, 1, 2, 3)
    assert "published 7/10  acked 4" in bar(view) and " 50%" in bar(view)


def test_a_confirm_settled_at_once_counts_as_each_settled_alone(ledger: Ledger) -> None:
    """``on_outcomes`` (one confirm frame's messages) keeps ``on_outcome``'s books."""
    alone, _feed, alone_writer = make_flow(ledger, 6, window=10, errors=5)
    at_once, _feed, at_once_writer = make_flow(ledger, 6, window=10, errors=5)
    results = [Outcome.SENT, Outcome.UNROUTABLE, Outcome.SENT, Outcome.NACKED, Outcome.SENT]
    for message, outcome in zip(alone.take(5), results, strict=True):
        alone.on_outcome(message, outcome)
    at_once.on_outcomes(list(zip(at_once.take(5), results, strict=True)))
    for flow in (alone, at_once):
        assert (flow.published, flow.errors, flow.window) == (3, 2, 3)
        assert +flow.counts == {"sent": 3, "unroutable": 1, "nacked": 1, "planned": 1}
    alone_writer.close()
    at_once_writer.close()


def test_commands_one_confirm_settled_wait_for_their_answers_alone(ledger: Ledger) -> None:
    """Commands one confirm settled time out together, but a client that starts later
    (``--spread``) gets its delivery wait from its start, and an offline one holds no slot."""
    writer = LedgerWriter(ledger.settings, "storm-t")
    late = time.time() + 0.3
    flow = StormFlow(
        Order("storm-t", "CCIM32", "STARTCYCLE", False, False, "t"),
        [
            Target("c0", "PC0"),
            Target("c1", "PC1", late),
            Target("c2", "PC2"),
            Target("c3", "PC3", offline=True),
        ],
        FlowLimits(10, None, None, delivery_wait=0.05, ttl=60),
        writer,
        Feed(),  # type: ignore[arg-type]
    )
    sent = flow.take(10)
    flow.on_outcomes([(message, Outcome.SENT) for message in sent])
    assert +flow.counts == {"sent": 3, "pending-offline": 1} and flow.window == 3
    assert flow.published == 4 and flow.first_sent_at == flow.last_sent_at
    time.sleep(0.1)
    flow.tick()
    assert +flow.counts == {"sent": 1, "pending-offline": 3} and flow.window == 1, "c1 starts later"
    while time.time() < late + 0.1:
        time.sleep(0.05)
    flow.tick()
    assert +flow.counts == {"pending-offline": 4} and flow.window == 0
    writer.close()


def test_targets_are_checked_before_anything_is_published(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger.settings, "storm-t")
    with pytest.raises(ValueError, match="client_id"):
        StormFlow(
            Order("storm-t", "CCIM32", "STARTCYCLE", False, False, "t"),
            [Target("c0", "PC0"), Target("c1", "PC 1")],
            FlowLimits(2, None, None, delivery_wait=0.05, ttl=60),
            writer,
            Feed(),  # type: ignore[arg-type]
        )
    writer.close()
