#!/usr/bin/env python3
"""The publisher's held writes (broker.cork) against pika's own transport, on one broker.

pika sends every frame with a ``send()`` of its own, three per message; the storm's
publisher holds a refill's frames and hands them over as one write. This times the
difference alone: the storm bench's bare publisher (``bench.storm._Raw``: pika's public
API, the storm's window over its channels) publishes the same ~200-byte commands into
``--queues`` queues, once on pika's own I/O services and once on
``broker.cork.CorkingServices``, the same publisher code both ways (its refills run
while pika reads the confirms, which the cork holds). Passes alternate, ``--rounds``
each way, in each lane; per pass: commands/s, the publisher's and the broker's CPU per
command (the broker's read from /proc, when it runs here) and ``send()`` calls per
command. Medians; prints one JSON line.

    .venv/bin/python bench/held_writes.py [--rounds 6] [--commands 20000]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import uuid
from pathlib import Path
from statistics import median
from typing import Any

import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_vhost, stop_cleanly_on_sigterm
from bench.machine import process_seconds
from bench.storm import _beam_pid, _Raw
from broker.cork import CorkingServices
from dispatcher.storms.storm import CHANNELS, CONFIRM_WINDOW, FAST_CONFIRM_WINDOW


class Sends:
    """Counts this process's ``socket.send()`` calls (pika's transport sends with it)."""

    def __init__(self) -> None:
        self.count = 0
        plain = socket.socket.send

        def counted(sock: socket.socket, data: Any, flags: int = 0) -> int:
            self.count += 1
            return plain(sock, data, flags)

        socket.socket.send = counted  # type: ignore[method-assign,assignment]


def one_pass(
    url: str, messages: list[tuple[str, str, bytes]], persistent: bool, held: bool, sends: Sends
) -> dict[str, float]:
    window = CONFIRM_WINDOW if persistent else FAST_CONFIRM_WINDOW
    broker = _beam_pid(None)
    before, sent = process_seconds(broker) if broker else None, sends.count
    timed = _Raw(messages, window // CHANNELS, persistent).run(
        url, ioloop=CorkingServices() if held else None
    )
    after = process_seconds(broker) if broker else None
    count = len(messages)
    figures = {
        "per_s": round(count / timed.seconds),
        "publisher_us": round(timed.cpu_s / count * 1e6, 1),
        "sends_per_command": round((sends.count - sent) / count, 2),
    }
    if before is not None and after is not None:
        figures["broker_us"] = round((after - before) / count * 1e6, 1)
    return figures


def medians(passes: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(median(p[key] for p in passes), 2) for key in passes[0]}


def main() -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--queues", type=int, default=200)
    args = parser.parse_args()
    sends = Sends()
    result: dict[str, Any] = {"commands": args.commands, "queues": args.queues}
    with scratch_vhost("setevnt-bench-held") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        queues = [f"held.{n}" for n in range(args.queues)]
        for queue in queues:
            channel.queue_declare(queue, durable=True)
        body = b"x" * 200
        messages = [(uuid.uuid4().hex, queues[n % len(queues)], body) for n in range(args.commands)]
        try:
            for lane, persistent in (("fast_lane", False), ("persistent", True)):
                passes: dict[bool, list[dict[str, float]]] = {True: [], False: []}
                for turn in range(args.rounds):
                    for held in (turn % 2 == 0, turn % 2 == 1):  # each goes first as often
                        passes[held].append(one_pass(url, messages, persistent, held, sends))
                        for queue in queues:
                            channel.queue_purge(queue)
                corked, plain = medians(passes[True]), medians(passes[False])
                result[lane] = {
                    "held": corked,
                    "pika": plain,
                    "rate_ratio": round(corked["per_s"] / plain["per_s"], 2),
                    "held_rates": [p["per_s"] for p in passes[True]],
                    "pika_rates": [p["per_s"] for p in passes[False]],
                }
                print(f"bench: {lane} {result[lane]}", file=sys.stderr, flush=True)
        finally:
            connection.close()
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
