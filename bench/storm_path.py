"""A storm's CPU per command on its publishing thread, without a broker.

The storm's own code between pika calls: the flow issues each command
(``StormFlow.take``), the publisher hands it to a channel whose ``basic_publish`` does
nothing (pika's own cost is the same for any publisher) and settles confirms through the
flow's ``on_outcomes``, each confirm taking ``--per-confirm`` messages (the broker's
confirm frames carried about 1.5 each in the storm bench: docs/performance.md), and
``--per-chunk`` confirms read from the broker at once (settled together, as the
publisher's held writes let it). The bare publisher of ``bench/storm.py`` runs the same
way beside it, for its own code's share.
The ledger's side is timed apart: the "sent" marks of the same commands through
``Ledger.apply``, by row, 1,250 a transaction. Thread CPU time, best of ``--repeat``.

    python -m bench.storm_path --commands 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import storm as storm_bench
from bench.ledger_rates import MARKS_PER_TRANSACTION
from bench.ledger_write import storm_rows
from broker.confirms import Confirm
from broker.cork import _CorkedTransport
from broker.publisher import ConfirmingPublisher, _ChannelShare, _Run
from broker.settings import BrokerSettings
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger, SentMark, Writes
from dispatcher.store.ledger_rows import Status
from dispatcher.storms.answers import Answers
from dispatcher.storms.flow import FlowLimits, Order, StormFlow, Target

WINDOW, CHANNELS = 512, 4
PER_CONFIRM = 2  # messages per confirm frame: the broker's ~1.5, rounded up
PER_CHUNK = 1  # confirm frames per chunk read from the broker: the fewest


class _Channel:
    is_open = True

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        """The frames' cost is pika's, the same for every publisher."""


class _Transport:
    def write(self, data: bytes) -> None:
        """What a publisher writes goes nowhere here."""


class _Writer:
    cancel_requested = False

    def submit(self, writes: Writes) -> None:
        """The ledger's side is timed on its own (:func:`marks`)."""


def _flow(commands: int) -> StormFlow:
    order = Order("storm-bench0001", "CCIM32", "STARTCYCLE", False, False, "bench")
    targets = [Target(f"c{i:08d}", f"client-{i:06d}") for i in range(commands)]
    # No client answers here: a window as large as the storm never holds it back.
    limits = FlowLimits(commands, None, None, delivery_wait=3600.0, ttl=600.0)
    return StormFlow(order, targets, limits, _Writer(), Answers(order.storm_id))  # type: ignore[arg-type]


def publishing(commands: int, per_confirm: int, per_chunk: int) -> float:
    """Seconds of thread CPU per command: issue, publish (no I/O), settle."""
    flow = _flow(commands)
    publisher = ConfirmingPublisher(BrokerSettings(), window=WINDOW, channels=CHANNELS)
    lanes = [_ChannelShare(_Channel(), WINDOW // CHANNELS) for _ in range(CHANNELS)]
    publisher._lanes = lanes
    run = _Run(pending=deque(), outcomes={}, on_outcome=None, source=flow)
    run.on_outcomes = flow.on_outcomes
    publisher._run = run
    # The connection's held writes, as CorkingServices links them.
    cork = publisher._cork
    cork._transport = _CorkedTransport(_Transport(), None)
    cork.before_release = publisher._settle_confirmed
    acked = [0] * CHANNELS
    turn = 0  # the channel whose confirm comes next
    start = time.thread_time()
    publisher._pump()
    while any(lane.unconfirmed for lane in lanes):
        with cork.held():  # one chunk read from the broker
            for _ in range(per_chunk):
                n, turn = turn, (turn + 1) % CHANNELS
                lane = lanes[n]
                if lane.unconfirmed:
                    acked[n] = min(acked[n] + per_confirm, lane.unconfirmed.last_tag)
                    publisher._on_confirm(lane, Confirm(acked[n], per_confirm > 1, False))
    seconds = time.thread_time() - start
    assert flow.published == commands, flow.published
    return seconds / commands


def bare(commands: int, per_confirm: int) -> float:
    """The same for the storm bench's bare publisher: its pump and confirm callback."""
    messages = storm_bench.bodies([f"client-{i:06d}" for i in range(commands)], "storm-bench0001")
    raw = storm_bench._Raw(messages, WINDOW // CHANNELS, True)
    raw.connection = SimpleNamespace(close=lambda: None)
    raw.lanes = [storm_bench._RawLane(_Channel()) for _ in range(CHANNELS)]
    acked = [0] * CHANNELS
    start = time.thread_time()
    raw.started = time.perf_counter()
    for lane in raw.lanes:
        raw.pump(lane)
    while any(lane.outstanding for lane in raw.lanes):
        for n, lane in enumerate(raw.lanes):
            if lane.outstanding:
                acked[n] = min(acked[n] + per_confirm, lane.tag)
                method = SimpleNamespace(delivery_tag=acked[n], multiple=per_confirm > 1)
                raw.confirmed(lane, SimpleNamespace(method=method))
    seconds = time.thread_time() - start
    assert raw.next == commands, raw.next
    return seconds / commands


def marks(commands: int) -> float:
    """Seconds of thread CPU per "sent" mark through ``Ledger.apply``, by row."""
    now = time.time()
    storm, records = storm_rows("storm-bench0001", commands)
    sent = [SentMark(Status.SENT.value, now, now + 600, now, r.command_id) for r in records]
    with (
        tempfile.TemporaryDirectory(prefix="setevnt-storm-path-") as directory,
        Ledger(DbSettings(str(Path(directory) / "ledger.db"))) as ledger,
    ):
        ledger.create_storm(storm, records)
        rows = ledger.rows_of(storm.storm_id)
        start = time.thread_time()
        for i in range(0, commands, MARKS_PER_TRANSACTION):
            writes = Writes(sent=sent[i : i + MARKS_PER_TRANSACTION])
            ledger.apply(writes, storm.storm_id, now, rows)
        return (time.thread_time() - start) / commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--per-confirm", type=int, default=PER_CONFIRM, help="messages a frame")
    parser.add_argument(
        "--per-chunk", type=int, default=PER_CHUNK, help="confirm frames read at once"
    )
    args = parser.parse_args()
    if args.per_confirm < 1 or args.per_chunk < 1:
        parser.error("--per-confirm and --per-chunk must be at least 1")
    publish = min(
        publishing(args.commands, args.per_confirm, args.per_chunk) for _ in range(args.repeat)
    )
    raw = min(bare(args.commands, args.per_confirm) for _ in range(args.repeat))
    mark = min(marks(args.commands) for _ in range(args.repeat))
    figures = {"publishing_us": publish, "bare_publisher_us": raw, "mark_us": mark}
    print(json.dumps({name: round(value * 1e6, 2) for name, value in figures.items()}))


if __name__ == "__main__":
    main()
