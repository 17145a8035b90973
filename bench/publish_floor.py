#!/usr/bin/env python3
"""How much of the bare publisher's CPU is pika's ``basic_publish`` itself.

Any publisher on pika's public API calls ``Channel.basic_publish`` once per message, so
that call's cost is the floor under a storm's CPU per command, whatever else it saves.
This runs the storm bench's bare publisher (``bench.storm.raw``) over ``--queues``
queues, alternating passes: one as it is, one with ``basic_publish`` wrapped to add up
the thread's CPU spent inside it. Per lane: the plain passes' CPU per 10,000 commands,
the time inside ``basic_publish`` and its share of the plain passes' CPU (the wrapper's
own cost is in the wrapped passes only). Medians; prints one JSON line.

    .venv/bin/python bench/publish_floor.py [--rounds 3] [--commands 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import pika
import pika.channel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_vhost, stop_cleanly_on_sigterm
from bench.storm import bodies, raw
from broker import topology
from dispatcher.storms.storm import new_storm_id

PER = 10_000  # figures per this many commands


@contextmanager
def counted(spent: list[float]) -> Iterator[None]:
    """``basic_publish`` adds the CPU its calls take to ``spent[0]`` meanwhile."""
    plain: Callable[..., Any] = pika.channel.Channel.basic_publish

    def basic_publish(self: pika.channel.Channel, *args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return plain(self, *args, **kwargs)
        finally:
            spent[0] += time.thread_time() - started

    pika.channel.Channel.basic_publish = basic_publish
    try:
        yield
    finally:
        pika.channel.Channel.basic_publish = plain


def lane(
    url: str, messages: list[tuple[str, str, bytes]], rounds: int, persistent: bool
) -> dict[str, float]:
    scale = PER / len(messages)
    plain, inside = [], []
    for _ in range(rounds):
        plain.append(raw(url, messages, persistent=persistent).cpu_s * scale)
        spent = [0.0]
        with counted(spent):
            raw(url, messages, persistent=persistent)
        inside.append(spent[0] * scale)
    return {
        "publisher_cpu_s": round(median(plain), 3),
        "basic_publish_cpu_s": round(median(inside), 3),
        "basic_publish_share": round(median(inside) / median(plain), 2),
    }


def main() -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=1_000)
    args = parser.parse_args()
    if min(args.rounds, args.commands, args.queues) < 1:
        parser.error("--rounds, --commands and --queues must be at least 1")
    clients = [f"FLOOR{n:05d}" for n in range(args.queues)]
    targets = [clients[n % len(clients)] for n in range(args.commands)]
    with scratch_vhost("setevnt-bench-floor") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            for client in clients:
                channel.queue_declare(topology.client_queue(client), durable=True)
        finally:
            connection.close()
        messages = bodies(targets, new_storm_id(time.time()))
        raw(url, messages, persistent=False)  # not counted: the queues' first messages
        result = {
            "bench": "publish_floor",
            "commands": args.commands,
            "queues": args.queues,
            "per_commands": PER,
            "fast_lane": lane(url, messages, args.rounds, persistent=False),
            "persistent": lane(url, messages, args.rounds, persistent=True),
        }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
