"""Request storms' turns: round-robin across requesters, capped per requester; and a
request storm's run that ends at its last confirm (no broker)."""

from __future__ import annotations

import threading

from broker.publisher import Outcome
from dispatcher.service.fair_queue import FairQueue, Turn
from dispatcher.store.ledger import Ledger
from tests.unit.test_storm_flow import make_flow


def take_all(queue: FairQueue) -> list[Turn]:
    taken = []
    while (turn := queue.take(timeout=0)) is not None:
        taken.append(turn)
    return taken


def test_a_burst_does_not_keep_another_requester_waiting() -> None:
    queue = FairQueue(lambda requester: 2)
    for n in range(100):
        queue.put("burst", f"a{n}")
    queue.put("other", "b0")
    first = take_all(queue)
    assert first == [Turn("burst", "a0"), Turn("other", "b0"), Turn("burst", "a1")]
    assert queue.running("burst") == 2 and queue.waiting() == 98
    assert queue.queued() == [f"a{n}" for n in range(2, 100)], "what still waits, in order"
    queue.done(first[0])
    assert take_all(queue) == [Turn("burst", "a2")], "its next storm, in its order"


def test_turns_alternate_between_requesters_with_work() -> None:
    queue = FairQueue(lambda requester: 10)
    for n in range(3):
        queue.put("a", f"a{n}")
        queue.put("b", f"b{n}")
    queue.put("c", "c0")
    order = [turn.storm_id for turn in take_all(queue)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]


def test_caps_are_per_requester_and_a_done_turn_wakes_a_worker() -> None:
    queue = FairQueue(lambda requester: 3 if requester == "ops" else 1)
    for n in range(4):
        queue.put("ops", f"o{n}")
        queue.put("desk", f"d{n}")
    taken = take_all(queue)
    assert sorted(t.storm_id for t in taken) == ["d0", "o0", "o1", "o2"]
    woken: list[Turn | None] = []
    worker = threading.Thread(target=lambda: woken.append(queue.take()))
    worker.start()
    queue.done(next(t for t in taken if t.requester == "desk"))
    worker.join(timeout=30)
    assert woken == [Turn("desk", "d1")]


def test_close_wakes_the_workers_and_hands_back_what_never_started() -> None:
    queue = FairQueue(lambda requester: 1)
    queue.put("a", "a0")
    queue.put("a", "a1")
    running = queue.take()
    results: list[Turn | None] = []
    worker = threading.Thread(target=lambda: results.append(queue.take()))
    worker.start()
    assert queue.close() == [Turn("a", "a1")]
    worker.join(timeout=30)
    assert results == [None] and running == Turn("a", "a0")
    assert queue.take() is None


def test_a_request_storm_run_ends_at_its_last_confirm(ledger: Ledger) -> None:
    """Its clients' answers are the intake thread's business: an offline client must not
    keep a worker for the delivery wait."""
    flow, _feed, writer = make_flow(ledger, 3, window=10)
    flow.await_answers = False
    first = flow.take(2)
    assert not flow.finished(), "one is still to publish"
    for message in [*first, *flow.take(10)]:  # the publisher asks once all are confirmed
        flow.on_outcome(message, Outcome.SENT)
    assert flow.window == 3 and flow.finished()
    flow.conclude()
    assert flow.state == "done" and flow.counts["sent"] == 3
    writer.close()
    waiting, _feed, writer = make_flow(ledger, 3, window=10)  # an operator's storm waits
    for message in waiting.take(10):
        waiting.on_outcome(message, Outcome.SENT)
    assert not waiting.finished()
    writer.close()
