#!/usr/bin/env python3
"""`make bench`: a cycle storm against N simulated clients, next to the naive way and the
broker's ceiling, all in one run so the ratios hold on a noisy machine.

Set-up (not timed): a private vhost, `setevnt-dispatcher serve` (registry, ledger,
collector) and `setevnt-agent simulate --clients N`, whose hellos get every client
registered and its queue provisioned. Then, one after the other, each waiting until every
client acked the previous phase, 2 s more, and until the broker's CPU is back near idle:

  (0) warm-up (not timed): three raw passes of one command per queue, so that no phase
      pays for the broker creating 10,000 queue indexes on disk and warming up (the
      first four pipelined passes ran at ~300, ~900, ~1,200 and ~2,000/s, the later ones
      at ~2,000/s), and another untimed pass after the first naive one;
  (a) naive: pika BlockingConnection + confirm_delivery(), one publish at a time;
  (b) raw:   pika SelectConnection, pipelined confirms over the storm's channels: the
             broker's ceiling;
  (c) storm: `setevnt-dispatcher storm CCIM32_STARTCYCLE --all` end to end;
  (b) and (c) take turns (--rounds, default 10; every other round the storm goes first,
  and the second publisher of a round finds the broker warmer, so an even number of
  rounds gives each the first seat as often),
  each with a transient pass first (the fast lane: transient commands, against a
  transient raw ceiling), so that every persistent pass follows a transient one; the
  naive way runs twice (first and last) and the faster counts.

The medians of (b) and (c) are the figures; the best passes and each round's ratio of
(c) to (b) are printed too. This broker's persistent rate depends on the state a pass
finds its file-handle cache in (~900 handles for 10,000 queue indexes): with the handles
of the last pass still open it must evict one for nearly every queue it writes, and the
same publisher runs ~2x slower than when it finds them closed; now and then a whole pass
crawls at <100/s with the broker's file_handle_cache process busy. So a single pass, or
the best of a few, says more about luck than about the publisher. The broker's CPU
seconds per pass are printed (read from /proc when the broker runs here), and so are the
publishers': the bench process during a raw pass, the whole storm process (start-up and
planning included), and each publisher's CPU from its first publish to its last confirm
(``window_cpu_s``: where the storm's own work per command shows). For that same window
of each timed pass, ``machine`` shows what the whole machine spent (bench/machine.py,
whose sampling process runs beside every timed pass, bare and storm alike): its idle
seconds and the CPU seconds of the broker, the simulated fleet, the dispatcher service
and the publisher; with no idle time left, a publisher's CPU per command slows all of
them.

All publish the same persistent ~200-byte commands into the same N queues, and the
simulated clients run and ack all of them. The raw publisher keeps as many confirms in
flight as the storm does (dispatcher.storms.storm.CONFIRM_WINDOW), split over as many channels
of one connection (dispatcher.storms.storm.CHANNELS): with ~900 broker file
handles a deeper window over 10,000 queues makes the file-handle cache thrash (raw with
1,000 in flight collapsed to <100/s here). Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple

import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, peak_rss_mb, scratch_vhost, stop_cleanly_on_sigterm, stop_process
from bench.machine import Machine, Sampler, process_seconds
from bench.node import own_node
from broker import topology
from dispatcher.api.dispatcher import default_requester
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from dispatcher.storms.storm import CHANNELS, CONFIRM_WINDOW, FAST_CONFIRM_WINDOW, new_storm_id
from schemas import Command, encode

BIN = Path(sys.executable).parent
TTL = 3600.0
FINAL = "('done', 'failed', 'rejected', 'expired', 'coalesced')"
# Seconds from a storm's start until the collector had every one of its acks.
ALL_ACKED_AFTER = (
    "SELECT max(c.acked_at) - s.created_at FROM commands c JOIN storms s"
    " ON s.storm_id = c.storm_id WHERE c.storm_id = ?"
)
# Seconds between one phase's last ack and the next phase, whoever publishes next: the
# broker is still writing the last phase's consumer acks to its queue indexes meanwhile.
SETTLE = 2.0
WARM_UP_PASSES = 3  # raw passes before anything is timed; the one after naive-0 adds one
STALLED = 120.0  # seconds without a confirm before a raw pass gives up
# The broker counts as done with a pass once it used less than this share of a core more
# than when idle, two seconds in a row; waiting at most:
QUIET_CPU = 0.25
QUIET_WAIT = 300.0
STORM_APP_ID = "setevnt-storm"  # the storm's connection name, in its commands' app_id


def code_path() -> str:
    """PYTHONPATH for the service, the fleet and the storms: this checkout first.

    The venv's editable install points at the checkout it was made from; without this, a
    bench run from another worktree would time that checkout's storm against its own raw
    publisher.
    """
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def code_version() -> str:
    """The commit measured, ``+dirty`` when the checkout has changes."""
    git = ["git", "-C", str(ROOT)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)


def wait_until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"bench: timed out after {seconds:.0f} s waiting for {what}")


def scalar(db: Path, sql: str, *args: Any) -> float:
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return float(connection.execute(sql, args).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0  # the tables are created by the service a moment after the file
    finally:
        connection.close()


def bodies(clients: list[str], tag: str) -> list[tuple[str, str, bytes]]:
    """(command id, queue, body) per client: what the storm sends, built the same way
    (a storm id of a storm's length, the storm's requester), so every body is its size."""
    now = time.time()
    requester = default_requester()
    out = []
    for client in clients:
        command = Command(
            command_id=uuid.uuid4().hex,
            client_id=client,
            component="CCIM32",
            event="STARTCYCLE",
            silent=False,
            issued_at=now,
            expires_at=now + TTL,
            requested_by=requester,
            storm_id=tag,
        )
        out.append((command.command_id, topology.client_queue(client), encode(command)))
    return out


def properties(command_id: str, persistent: bool = True) -> pika.BasicProperties:
    """The properties a storm's command carries (its app id is the storm's connection name)."""
    return pika.BasicProperties(
        message_id=command_id,
        type="command",
        content_type="application/msgpack",
        delivery_mode=2 if persistent else 1,
        expiration=str(int(TTL * 1000)),
        timestamp=int(time.time()),
        app_id=STORM_APP_ID,
    )


class Timed(NamedTuple):
    """A publisher's pass: seconds from its first publish to its last confirm, the CPU
    seconds this process spent meanwhile, and when (epoch seconds) that window began."""

    seconds: float
    cpu_s: float
    started_at: float = 0.0

    @property
    def ended_at(self) -> float:
        return self.started_at + self.seconds


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def naive(url: str, messages: list[tuple[str, str, bytes]]) -> Timed:
    """What users write: wait for each confirm before publishing the next."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        started_at, started, cpu = time.time(), time.perf_counter(), cpu_now()
        for command_id, queue, body in messages:
            channel.basic_publish("", queue, body, properties(command_id), mandatory=True)
        return Timed(time.perf_counter() - started, cpu_now() - cpu, started_at)
    finally:
        connection.close()


def raw_fast(url: str, messages: list[tuple[str, str, bytes]]) -> Timed:
    """The ceiling for transient commands (the storm's fast lane), with its window."""
    return raw(url, messages, window=FAST_CONFIRM_WINDOW, persistent=False)


def raw(
    url: str,
    messages: list[tuple[str, str, bytes]],
    window: int = CONFIRM_WINDOW,
    persistent: bool = True,
) -> Timed:
    """A bare pipelined publisher with confirms: the broker's ceiling on this machine.

    Over as many channels of one connection as the storm uses, each with its share of the
    window: the same pipe the storm publishes through, with nothing of the storm's own.
    """
    return _Raw(messages, window // CHANNELS, persistent).run(url)


@dataclass
class _RawLane:
    channel: Any
    tag: int = 0  # the last delivery tag used (they count per channel, from 1)
    outstanding: set[int] = field(default_factory=set)


class _Raw:
    def __init__(
        self, messages: list[tuple[str, str, bytes]], share: int, persistent: bool
    ) -> None:
        self.messages, self.share, self.persistent = messages, share, persistent
        self.lanes: list[_RawLane] = []
        self.next = 0
        self.started = self.started_at = self.elapsed = self.progress = 0.0
        self.cpu_started = self.cpu = 0.0
        self.errors: list[BaseException] = []
        self.connection: Any = None

    def run(self, url: str, ioloop: Any = None) -> Timed:
        """One pass; on ``ioloop`` (pika's ``custom_ioloop``), else on pika's own."""
        self.connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self.opened,
            on_open_error_callback=self.failed,
            on_close_callback=lambda c, r: c.ioloop.stop(),
            custom_ioloop=ioloop,
        )
        self.progress = time.monotonic()
        self.connection.ioloop.call_later(5, self.watchdog)
        try:
            self.connection.ioloop.start()
        finally:
            self.connection.ioloop.close()
        if self.errors or not self.elapsed:
            raise SystemExit(f"bench: the raw publisher failed: {self.errors or 'closed'}")
        return Timed(self.elapsed, self.cpu, self.started_at)

    def opened(self, connection: Any) -> None:
        for _ in range(CHANNELS):
            connection.channel(on_open_callback=self.channel_open)

    def channel_open(self, channel: Any) -> None:
        lane = _RawLane(channel)
        channel.confirm_delivery(
            ack_nack_callback=lambda frame: self.confirmed(lane, frame),
            callback=lambda _frame: self.confirming(lane),
        )

    def confirming(self, lane: _RawLane) -> None:
        self.lanes.append(lane)
        if len(self.lanes) == CHANNELS:  # every channel confirms: go
            self.started_at = time.time()
            self.started, self.cpu_started = time.perf_counter(), cpu_now()
            for each in self.lanes:
                self.pump(each)

    def pump(self, lane: _RawLane) -> None:
        while len(lane.outstanding) < self.share and self.next < len(self.messages):
            command_id, queue, body = self.messages[self.next]
            lane.channel.basic_publish(
                "", queue, body, properties(command_id, self.persistent), mandatory=True
            )
            self.next += 1
            lane.tag += 1
            lane.outstanding.add(lane.tag)

    def confirmed(self, lane: _RawLane, frame: Any) -> None:
        tag, outstanding = frame.method.delivery_tag, lane.outstanding
        outstanding.difference_update(
            [t for t in outstanding if t <= tag] if frame.method.multiple else [tag]
        )
        self.progress = time.monotonic()
        if self.next == len(self.messages) and not any(each.outstanding for each in self.lanes):
            self.elapsed = time.perf_counter() - self.started
            self.cpu = cpu_now() - self.cpu_started
            self.connection.close()
            return
        self.pump(lane)

    def watchdog(self) -> None:
        if time.monotonic() - self.progress > STALLED:
            self.errors.append(TimeoutError(f"no confirm for {STALLED:.0f} s"))
            self.connection.ioloop.stop()
            return
        self.connection.ioloop.call_later(5, self.watchdog)

    def failed(self, connection: Any, error: BaseException) -> None:
        self.errors.append(error)
        connection.ioloop.stop()


def signing_flags() -> list[str]:
    """The simulated fleet takes unsigned commands: say so, unless a key is configured."""
    return [] if os.environ.get("SETEVNT_SIGNING_KEY_FILE") else ["--unsigned"]


def run_storm(
    env: dict[str, str],
    db: Path,
    args: argparse.Namespace,
    log: Path,
    machine: Machine,
    *,
    fast: bool,
) -> dict[str, Any]:
    """The project's storm end to end, as an operator runs it; adds its peak RSS."""
    argv = [str(BIN / "setevnt-dispatcher"), "--log-level", "WARNING", "storm"]
    argv += ["CCIM32_STARTCYCLE", "--all", "--yes", "--max-in-flight", args.max_in_flight]
    argv += ["--db", str(db), "--json"] + (["--fast"] if fast else []) + signing_flags()
    print(f"bench: storm{' --fast' if fast else ''} starting", file=sys.stderr, flush=True)
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=err
        )
        with Sampler(machine, proc.pid) as sampler:
            assert proc.stdout is not None
            output = proc.stdout.read()
            proc.stdout.close()
        # Sampled until here, before the process is reaped: its /proc entry stays until then.
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = output.decode().strip().splitlines()
    if proc.returncode not in (0, 1) or not lines:
        raise SystemExit(f"bench: storm exited {proc.returncode}: {log.read_text()[-3000:]}")
    storm: dict[str, Any] = json.loads(lines[-1])
    storm["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    storm["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(
        f"bench: storm{' --fast' if fast else ''} {storm['enqueue_per_second']}/s", file=sys.stderr
    )
    phase_acked(db, storm["storm_id"], args.clients, 300)
    # From the ledger, not the storm's own figure: a storm ends after its delivery wait,
    # with late clients pending-offline, and their acks still count here.
    storm["all_acked_after_s"] = round(scalar(db, ALL_ACKED_AFTER, storm["storm_id"]), 3)
    first = scalar(db, "SELECT publishing_at FROM storms WHERE storm_id = ?", storm["storm_id"])
    last = scalar(db, "SELECT max(sent_at) FROM commands WHERE storm_id = ?", storm["storm_id"])
    storm["machine"] = sampler.between(first, last)
    storm["window_cpu_s"] = storm["machine"]["publisher_s"] if storm["machine"] else None
    return storm


def phase(
    url: str, db: Path, clients: list[str], name: str, publish: Any, machine: Machine | None
) -> tuple[float, float, Timed, dict[str, float] | None]:
    """(commands/s, CPU seconds of this process for the whole pass, the pass as timed
    from its first publish to its last confirm, and what the machine spent in that window
    when it is sampled: ``machine`` given, as for a storm)."""
    tag = new_storm_id(time.time())  # the length of a storm's id, in every body
    messages = bodies(clients, tag)
    register(db, tag, clients, messages)
    print(f"bench: {name} publishing ({tag})", file=sys.stderr, flush=True)
    before = cpu_now()
    sampler = Sampler(machine, os.getpid()) if machine else None
    try:
        timed = publish(url, messages)
    finally:
        if sampler:
            sampler.stop(covering=time.time())
    cpu = cpu_now() - before
    spent = sampler.between(timed.started_at, timed.ended_at) if sampler else None
    per_second = round(len(messages) / timed.seconds, 1)
    print(f"bench: {name} {per_second}/s", file=sys.stderr)
    phase_acked(db, tag, len(messages), 300)
    return per_second, round(cpu, 2), timed, spent


def register(
    db: Path, tag: str, clients: list[str], messages: list[tuple[str, str, bytes]]
) -> None:
    """Rows for a bare publisher's commands, as a dispatcher writes them before publishing:
    the collector records an ack only onto its own command's row, and never makes one."""
    now = time.time()
    record = StormRecord(
        tag,
        "CCIM32",
        "STARTCYCLE",
        {},
        len(messages),
        "done",
        None,
        "bench",
        now,
        now,
        now,
        "bench",
        False,
    )
    commands = [
        CommandRecord(
            command_id,
            tag,
            client,
            "CCIM32",
            "STARTCYCLE",
            "sent",
            issued_at=now,
            expires_at=now + TTL,
        )
        for client, (command_id, _queue, _body) in zip(clients, messages, strict=True)
    ]
    with Ledger(DbSettings(str(db))) as ledger:
        ledger.create_storm(record, commands)


def phase_acked(db: Path, tag: str, count: int, seconds: float) -> None:
    sql = f"SELECT count(*) FROM commands WHERE storm_id = ? AND status IN {FINAL}"
    wait_until(lambda: scalar(db, sql, tag) >= count, seconds, f"every ack of the {tag} phase")


def main() -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--connections", type=int, help="simulator connections")
    parser.add_argument("--max-in-flight", default="100%")
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="raw/storm turns, each publisher first in every other one (medians count)",
    )
    parser.add_argument(
        "--own-node",
        action="store_true",
        help="run on a RabbitMQ node of the bench's own with a production file-descriptor "
        "limit, instead of the machine's broker (see bench/node.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="setevnt-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            if args.own_node:
                node = stack.enter_context(own_node())
                where = {"amqp_address": node.amqp_address, "management_url": node.management_url}
                broker = {"node": "own", "fd_limit": node.fd_limit}
                node_name: str | None = node.name
            else:
                where, node_name = {}, None
                broker = {"node": "machine", "fd_limit": _fd_limit(_beam_pid(None))}
            url = stack.enter_context(scratch_vhost("setevnt-bench-storm", **where))
            result = {"broker": broker, "code": code_version()} | bench(args, url, work, node_name)
            # Printed before the vhost goes: deleting 10,000 queues takes a while.
            print(json.dumps(result, sort_keys=True), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # A storm must keep up in both lanes: one that misses in either fails `make bench`.
    return 0 if all(result["targets_met"].values()) else 1


def bench(args: argparse.Namespace, url: str, work: Path, node_name: str | None) -> dict[str, Any]:
    db = work / "setevnt.db"
    # The simulated fleet answers for 10,000 clients as one broker user (guest): its acks
    # count only from a trusted sender. Commands go unsigned unless a key is configured.
    env = {"SETEVNT_AMQP_URL": url, "SETEVNT_DB": str(db), "SETEVNT_TRUSTED_SENDERS": "guest"}
    env["PYTHONPATH"] = code_path()
    clients = [f"BENCH{n:05d}" for n in range(args.clients)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        serve = start(
            [str(BIN / "setevnt-dispatcher"), "serve", "--metrics-port", "0", *signing_flags()],
            work / "serve.log",
            env,
        )
        started.append(serve)
        wait_until(
            lambda: scalar(db, "SELECT count(*) FROM sqlite_master") > 0, 30, "the dispatcher"
        )
        simulate = [
            str(BIN / "setevnt-agent"),
            "simulate",
            "--clients",
            str(args.clients),
            "--prefix",
            "BENCH",
        ]
        simulate += ["--connections", str(args.connections)] if args.connections else []
        sim = start(simulate, work / "simulate.log", env)
        started.append(sim)
        wait_until(
            lambda: "clients consuming" in (work / "simulate.log").read_text(),
            300,
            "every simulated client registered, provisioned and consuming",
        )
        print(f"bench: {args.clients} simulated clients consuming", file=sys.stderr)
        broker = BrokerCpu(_beam_pid(node_name))
        machine = Machine()
        machine.watch("broker", broker.pid)
        machine.watch("simulator", sim.pid)
        machine.watch("service", serve.pid)
        return measure(args, url, db, env, clients, work, broker, machine) | {
            "collector_peak_rss_mb": round(peak_rss_mb(serve.pid), 1),
            "simulator_peak_rss_mb": round(peak_rss_mb(sim.pid), 1),
        }
    finally:
        for proc in reversed(started):
            stop_process(proc, 30)


def measure(
    args: argparse.Namespace,
    url: str,
    db: Path,
    env: dict[str, str],
    clients: list[str],
    work: Path,
    broker: BrokerCpu,
    machine: Machine,
) -> dict[str, Any]:

    def raw_pass(name: str, publish: Any, sampled: bool = False) -> Pass:
        """A bare or naive pass; ``sampled``: a timed one, beside a sampler as a storm is."""
        with broker.pass_(name):
            rate, cpu, timed, spent = phase(
                url, db, clients, name, publish, machine if sampled else None
            )
        return Pass(rate, cpu, broker.last, round(timed.cpu_s, 2), spent)

    def storm_pass(turn: int, fast: bool) -> Pass:
        name = f"storm{'-fast' if fast else ''}-{turn}"
        with broker.pass_(name):
            storm = run_storm(env, db, args, work / f"{name}.log", machine, fast=fast)
        rate = storm["enqueue_per_second"] or 0.0
        return Pass(
            rate, storm["cpu_s"], broker.last, storm["window_cpu_s"], storm["machine"], storm
        )

    broker.measure_idle()
    # Not timed: the first pipelined passes after the fleet came up ran at ~300, ~900,
    # ~1,200/s here, and only the fourth and later ones at a steady ~2,000/s.
    for warm in range(WARM_UP_PASSES):
        raw_pass(f"warm-up-{warm}", raw)
    naive_rates = [raw_pass("naive-0", naive).rate]
    # Not timed either: the first pipelined pass after the slow naive one crawled twice here
    # (its broker's file-handle cache, not its publisher), and round 0 starts with raw.
    raw_pass("after-naive", raw)
    lanes = {"persistent": Lane(), "fast": Lane()}

    def raw_turn(turn: int) -> None:
        lanes["fast"].raws.append(raw_pass(f"raw-fast-{turn}", raw_fast, sampled=True))
        lanes["persistent"].raws.append(raw_pass(f"raw-{turn}", raw, sampled=True))

    def storm_turn(turn: int) -> None:
        lanes["fast"].storms.append(storm_pass(turn, True))
        lanes["persistent"].storms.append(storm_pass(turn, False))

    for turn in range(args.rounds):
        # Every other round the storm goes first, and every persistent pass follows a
        # transient one: a persistent pass right after another ran slower, raw and storm
        # alike, as if it paid for work its predecessor left the broker
        # (docs/performance.md, "Pass order").
        for publisher_turn in (storm_turn, raw_turn) if turn % 2 else (raw_turn, storm_turn):
            publisher_turn(turn)
    naive_rates.append(raw_pass("naive-1", naive).rate)
    naive_rate = max(naive_rates)
    persistent = lanes["persistent"].summary(naive_rate)
    quick = lanes["fast"].summary(naive_rate)
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "naive_per_s": naive_rate,
        "passes": {
            "naive_per_s": naive_rates,
            **lanes["persistent"].passes(""),
            **lanes["fast"].passes("fast_"),
        },
        "confirm_window": {"persistent": CONFIRM_WINDOW, "fast": FAST_CONFIRM_WINDOW},
        "channels": CHANNELS,
        **persistent,
        "fast_lane": quick,
        "targets_met": {"persistent": persistent["targets_met"], "fast_lane": quick["targets_met"]},
    }


@dataclass(frozen=True)
class Pass:
    rate: float  # commands/s, first publish to last confirm
    cpu_s: float  # the publisher's: the bench's raw pass, or the whole storm process
    broker_cpu_s: float | None  # the broker's CPU seconds until it was done with the pass
    window_cpu_s: float | None  # the publisher's, from its first publish to its last confirm
    # Meanwhile, the machine's idle seconds and each process's CPU seconds (bench.machine)
    machine: dict[str, float] | None = None
    storm: dict[str, Any] | None = None  # the storm's own JSON


@dataclass
class Lane:
    """The raw and storm passes of one delivery mode (persistent or fast)."""

    raws: list[Pass] = field(default_factory=list)
    storms: list[Pass] = field(default_factory=list)

    def passes(self, prefix: str) -> dict[str, list[Any]]:
        return {
            f"raw_{prefix}per_s": [p.rate for p in self.raws],
            f"storm_{prefix}per_s": [p.rate for p in self.storms],
            # Each storm against the raw pass of its own round (run right before or after
            # it): the spread of these says how far one run's medians can be trusted.
            f"storm_{prefix}vs_raw_by_round": [
                round(s.rate / r.rate, 2) if r.rate else None
                for r, s in zip(self.raws, self.storms, strict=True)
            ],
            f"raw_{prefix}cpu_s": [p.cpu_s for p in self.raws],
            f"storm_{prefix}process_cpu_s": [p.cpu_s for p in self.storms],
            f"raw_{prefix}broker_cpu_s": [p.broker_cpu_s for p in self.raws],
            f"storm_{prefix}broker_cpu_s": [p.broker_cpu_s for p in self.storms],
            f"raw_{prefix}window_cpu_s": [p.window_cpu_s for p in self.raws],
            f"storm_{prefix}window_cpu_s": [p.window_cpu_s for p in self.storms],
            f"raw_{prefix}machine": [p.machine for p in self.raws],
            f"storm_{prefix}machine": [p.machine for p in self.storms],
        }

    def summary(self, naive_rate: float) -> dict[str, Any]:
        """Medians are the figures; the best passes are shown too.

        A pass's rate here depends on the state it finds the broker's file-handle cache
        in: the same publisher swings ~2x either way from one pass to the next, and now and
        then a pass crawls at <100/s. The best pass of each says more about which one got
        lucky than about the publishers; the median of each says what a storm gets.
        """
        raw_rate = median(p.rate for p in self.raws)
        storm_rate = median(p.rate for p in self.storms)
        typical = min(self.storms, key=lambda p: abs(p.rate - storm_rate))
        assert typical.storm is not None
        vs_naive = round(storm_rate / naive_rate, 2)
        vs_raw = round(storm_rate / raw_rate, 2)
        all_acked = [float(p.storm["all_acked_after_s"]) for p in self.storms if p.storm]
        best_raw = max(p.rate for p in self.raws)
        best_storm = max(p.rate for p in self.storms)
        return {
            "raw_per_s": raw_rate,
            "storm_per_s": storm_rate,
            "storm_vs_naive": vs_naive,
            "storm_vs_raw": vs_raw,
            "best": {
                "raw_per_s": best_raw,
                "storm_per_s": best_storm,
                "storm_vs_naive": round(best_storm / naive_rate, 2),
                "storm_vs_raw": round(best_storm / best_raw, 2),
            },
            "storm_states": sorted({p.storm["state"] for p in self.storms if p.storm}),
            "storm_acked": [p.storm["acked"] for p in self.storms if p.storm],
            "all_acked_after_s": {"median": round(median(all_acked), 3), "worst": max(all_acked)},
            "latency_s": typical.storm["latency_s"],  # of the median storm
            "dispatcher_peak_rss_mb": max(p.storm["peak_rss_mb"] for p in self.storms if p.storm),
            "targets_met": bool(vs_naive >= 4 and vs_raw >= 0.9 and max(all_acked) <= 30),
        }


class BrokerCpu:
    """Passes are measured one after the other, each once the broker is done with the
    last; its CPU seconds per pass are read from /proc (None when not readable)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.last: float | None = None
        self.idle: float | None = None

    def settle(self) -> None:
        """Pause after a pass, then wait until the broker is done with it.

        The ledger has a command's ack once the client published it, but the broker
        still has to write the client's consumer ack to the queue's index; after a pass
        over 10,000 queues that took it up to minutes here (file-handle churn), and a
        pass started meanwhile paid for its predecessor.
        """
        time.sleep(SETTLE)
        if self.idle is None:
            return
        started = time.monotonic()
        quiet = 0
        while quiet < 2 and time.monotonic() - started < QUIET_WAIT:
            usage = self._usage(1.0)
            if usage is None:
                return
            quiet = quiet + 1 if usage < self.idle + QUIET_CPU else 0
        waited = time.monotonic() - started
        if waited > 2.5:
            print(f"bench: waited {waited:.0f} s for the broker to finish", file=sys.stderr)

    def measure_idle(self) -> None:
        """The broker's CPU use with the fleet connected and nothing published."""
        self.idle = self._usage(3.0)
        if self.idle is not None:
            print(f"bench: broker idle at {self.idle:.2f} of a core", file=sys.stderr)

    def _usage(self, seconds: float) -> float | None:
        before = self._seconds()
        time.sleep(seconds)
        after = self._seconds()
        return None if before is None or after is None else (after - before) / seconds

    @contextlib.contextmanager
    def pass_(self, name: str) -> Iterator[None]:
        """Around a pass: the broker's CPU from its start until the broker is done with it."""
        before = self._seconds()
        yield
        self.settle()
        after = self._seconds()
        self.last = round(after - before, 1) if before is not None and after is not None else None
        if self.last is not None:
            print(f"bench: {name}: broker CPU {self.last} s", file=sys.stderr)

    def _seconds(self) -> float | None:
        return None if self.pid is None else process_seconds(self.pid)


def _beam_pid(node_name: str | None) -> int | None:
    """The broker's process: the named node's, or else the machine's (None when unsure)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"beam.smp" not in (entry / "cmdline").read_bytes():
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if node_name is not None:
            if f"RABBITMQ_NODENAME={node_name}".encode() in environ:
                found.append(int(entry.name))
        elif b"RABBITMQ_NODENAME=setevnt-" not in environ:  # not a test's or bench's node
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


def _fd_limit(pid: int | None) -> int | None:
    """The broker process's soft limit on open files."""
    if pid is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


if __name__ == "__main__":
    sys.exit(main())
