"""waiting-node: a command whose client's queue is on a cluster node that is down is
parked, never failed, sent again with its own expiry once the node is back."""

from __future__ import annotations

import time

import pytest

from broker.publisher import Outcome
from broker.queue_probe import Probed, QueueState, classify_not_found
from dispatcher.store.ledger import Ledger, LedgerWriter
from dispatcher.storms.flow import FlowLimits, Order, StormFlow, Target
from schemas.codec import decode
from schemas.messages import Command
from tests.unit.test_storm_flow import Feed, ack

NODE = "rabbit@n3"


class Nodes:
    """Stands in for the queue probe: which clients' queues are on a node that is down."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.missing: set[str] = set()
        self.asked = 0

    def state(self, queue: str) -> Probed:
        self.asked += 1
        client = queue.rsplit(".", 1)[-1]
        if client in self.down:
            return Probed(QueueState.NODE_DOWN, NODE)
        if client in self.missing:
            return Probed(QueueState.MISSING)
        return Probed(QueueState.PRESENT)


def make(ledger: Ledger, nodes: Nodes, *, ttl: float = 60) -> tuple[StormFlow, Feed, LedgerWriter]:
    feed, writer = Feed(), LedgerWriter(ledger.settings, "storm-w")
    flow = StormFlow(
        Order("storm-w", "CCIM32", "STARTCYCLE", False, False, "t"),
        [Target(f"c{n}", f"PC{n}") for n in range(4)],
        FlowLimits(10, 0, None, delivery_wait=30, ttl=ttl),
        writer,
        feed,  # type: ignore[arg-type]
        nodes=nodes,
    )
    assert flow.waiting is not None
    flow.waiting._recheck_every = 0.0  # every tick, for the test
    return flow, feed, writer


def test_the_broker_text_tells_a_down_node_from_a_missing_queue() -> None:
    down = classify_not_found(
        "NOT_FOUND - home node 'rabbit@n3' of queue 'setevnt.client.PC1' in vhost '/' "
        "is down or inaccessible"
    )
    assert down == Probed(QueueState.NODE_DOWN, "rabbit@n3")
    assert classify_not_found("NOT_FOUND - no queue 'q' in vhost '/'").state is QueueState.MISSING


def test_a_down_node_parks_commands_and_they_go_again_when_it_is_back(ledger: Ledger) -> None:
    nodes = Nodes()
    nodes.down = {"PC1", "PC2"}
    flow, feed, writer = make(ledger, nodes)
    first = {m.key: m for m in flow.take(10)}
    flow.on_outcome(first["c0"], Outcome.SENT)
    flow.on_outcome(first["c1"], Outcome.UNROUTABLE)
    flow.on_outcome(first["c2"], Outcome.NACKED)
    flow.on_outcome(first["c3"], Outcome.SENT)
    assert flow.counts["waiting-node"] == 2 and flow.errors == 0, "not failed"
    assert flow.state == "running", "--max-errors 0 is not crossed"
    feed.acks += [ack("c0"), ack("c3")]
    flow.tick()
    assert flow.window == 0 and not flow.finished(), "the parked ones are awaited"
    assert flow.take(10) == [], "nothing goes while the node is down"
    nodes.down.clear()  # the node is back
    flow.tick()
    again = {m.key: m for m in flow.take(10)}
    assert set(again) == {"c1", "c2"}
    before, after = decode(first["c1"].body, Command), decode(again["c1"].body, Command)
    assert (after.issued_at, after.expires_at) == (before.issued_at, before.expires_at)
    assert again["c1"].expiration_ms is not None and again["c1"].expiration_ms <= 60_000
    for message in again.values():
        flow.on_outcome(message, Outcome.SENT)
    feed.acks += [ack("c1"), ack("c2")]
    flow.tick()
    assert flow.counts["done"] == 4 and flow.errors == 0 and flow.finished()
    assert flow.published == 4
    writer.close()


def test_a_missing_queue_is_still_unroutable(ledger: Ledger) -> None:
    nodes = Nodes()
    nodes.missing = {"PC0"}
    flow, _feed, writer = make(ledger, nodes)
    message = flow.take(1)[0]
    flow.on_outcome(message, Outcome.UNROUTABLE)
    assert flow.counts["unroutable"] == 1 and flow.errors == 1
    writer.close()


def test_a_full_queue_is_still_nacked(ledger: Ledger) -> None:
    flow, _feed, writer = make(ledger, Nodes())  # the queue is there: its bound refused it
    flow.on_outcome(flow.take(1)[0], Outcome.NACKED)
    assert flow.counts["nacked"] == 1 and flow.errors == 1
    writer.close()


def test_a_node_down_past_the_ttl_expires_the_command(ledger: Ledger) -> None:
    nodes = Nodes()
    nodes.down = {"PC0"}
    flow, _feed, writer = make(ledger, nodes, ttl=0.05)
    flow.on_outcome(flow.take(1)[0], Outcome.UNROUTABLE)
    assert flow.counts["waiting-node"] == 1
    time.sleep(0.06)
    flow.tick()
    assert flow.counts["expired"] == 1 and flow.counts["waiting-node"] == 0
    writer.close()


@pytest.mark.parametrize("down", [1, 3])
def test_one_probe_per_down_node_per_recheck(ledger: Ledger, down: int) -> None:
    nodes = Nodes()
    nodes.down = {f"PC{n}" for n in range(down)}
    flow, _feed, writer = make(ledger, nodes)
    for message in flow.take(10)[:down]:
        flow.on_outcome(message, Outcome.UNROUTABLE)
    asked = nodes.asked
    flow.tick()
    assert nodes.asked == asked + 1
    writer.close()
