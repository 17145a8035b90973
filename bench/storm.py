#!/usr/bin/env python3
"""`make bench`: a cycle storm against N simulated clients, next to the naive way and the
broker's ceiling, all in one run so the ratios hold on a noisy machine.

Set-up (not timed): a private vhost, `setevnt-dispatcher serve` (registry, ledger,
collector) and `setevnt-agent simulate --clients N`, whose hellos get every client
registered and its queue provisioned. Then, one after the other, each waiting until every
client acked the previous phase:

  (0) warm-up (not timed): one command per queue, so that no phase pays for the broker
      creating 10,000 queue indexes on disk (the first pass ran at a third of the speed);
  (a) naive: pika BlockingConnection + confirm_delivery(), one publish at a time;
  (b) raw:   pika SelectConnection, pipelined confirms: the broker's ceiling;
  (c) storm: `setevnt-dispatcher storm CCIM32_STARTCYCLE --all` end to end;
  (b) and (c) take turns (--rounds, default 3) and the best of each counts; then the
  same for the fast lane (transient commands) against a transient raw ceiling; the
  naive way runs twice (first and last) and its best counts too.

Best-of, because this broker's persistent rate swings between ~100/s and ~4,000/s from
one 10,000-command pass to the next whatever publishes (measured with the raw publisher
alone at confirm windows of 64 to 512: a pass at any window could collapse), and a
collapse says nothing about the publisher. CPU seconds of each publisher are printed
too: the storm's process (including start-up and planning) against the bench process
during a raw pass.

All publish the same persistent ~200-byte commands into the same N queues, and the
simulated clients run and ack all of them. The raw publisher keeps as many confirms in
flight as the storm does (dispatcher.storm.CONFIRM_WINDOW): with ~900 broker file
handles a deeper window over 10,000 queues makes the broker's file-handle cache thrash
(raw with 1,000 in flight collapsed to <100/s here). Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, management, peak_rss_mb, scratch_vhost
from broker import topology
from dispatcher.storm import CONFIRM_WINDOW, FAST_CONFIRM_WINDOW
from schemas import Command, encode

BIN = Path(sys.executable).parent
TTL = 3600.0
FINAL = "('done', 'failed', 'rejected', 'expired', 'coalesced')"
SETTLE = 2.0  # seconds between phases


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


def scalar(db: Path, sql: str, *args: Any) -> int:
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(connection.execute(sql, args).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0  # the tables are created by the service a moment after the file
    finally:
        connection.close()


def bodies(clients: list[str], tag: str) -> list[tuple[str, str, bytes]]:
    """(command id, queue, body) per client: what the storm sends, built the same way."""
    now = time.time()
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
            requested_by="bench",
            storm_id=tag,
        )
        out.append((command.command_id, topology.client_queue(client), encode(command)))
    return out


def properties(command_id: str, persistent: bool = True) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=command_id,
        type="command",
        content_type="application/msgpack",
        delivery_mode=2 if persistent else 1,
        expiration=str(int(TTL * 1000)),
        timestamp=int(time.time()),
        app_id="bench",
    )


def naive(url: str, messages: list[tuple[str, str, bytes]]) -> float:
    """What users write: wait for each confirm before publishing the next."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        started = time.perf_counter()
        for command_id, queue, body in messages:
            channel.basic_publish("", queue, body, properties(command_id))
        return time.perf_counter() - started
    finally:
        connection.close()


def raw_fast(url: str, messages: list[tuple[str, str, bytes]]) -> float:
    """The ceiling for transient commands (the storm's fast lane), with its window."""
    return raw(url, messages, window=FAST_CONFIRM_WINDOW, persistent=False)


def raw(
    url: str,
    messages: list[tuple[str, str, bytes]],
    window: int = CONFIRM_WINDOW,
    persistent: bool = True,
) -> float:
    """A bare pipelined publisher with confirms: the broker's ceiling on this machine."""
    state = {"next": 0, "tag": 0, "confirmed": 0, "started": 0.0, "elapsed": 0.0}
    outstanding: set[int] = set()

    def pump(channel: Any) -> None:
        while len(outstanding) < window and state["next"] < len(messages):
            command_id, queue, body = messages[state["next"]]
            channel.basic_publish("", queue, body, properties(command_id, persistent))
            state["next"] += 1
            state["tag"] += 1
            outstanding.add(state["tag"])

    def on_confirm(frame: Any) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        done = [t for t in outstanding if t <= tag] if multiple else [tag]
        outstanding.difference_update(done)
        state["confirmed"] += len(done)
        if state["confirmed"] == len(messages):
            state["elapsed"] = time.perf_counter() - state["started"]
            connection.close()
            return
        pump(channel_holder[0])

    channel_holder: list[Any] = []

    def on_channel(channel: Any) -> None:
        channel_holder.append(channel)

        def confirming(_frame: Any) -> None:
            state["started"] = time.perf_counter()
            pump(channel)

        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=confirming)

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    try:
        connection.ioloop.start()
    finally:
        connection.ioloop.close()
    return float(state["elapsed"])


def run_storm(
    env: dict[str, str], db: Path, args: argparse.Namespace, log: Path, *, fast: bool
) -> dict[str, Any]:
    """The project's storm end to end, as an operator runs it; adds its peak RSS."""
    argv = [str(BIN / "setevnt-dispatcher"), "--log-level", "WARNING", "storm"]
    argv += ["CCIM32_STARTCYCLE", "--all", "--max-in-flight", args.max_in_flight]
    argv += ["--db", str(db), "--json"] + (["--fast"] if fast else [])
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.stdout.close()
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
    return storm


def phase(url: str, db: Path, clients: list[str], name: str, publish: Any) -> tuple[float, float]:
    """(commands/s, CPU seconds of this process while publishing)."""
    messages = bodies(clients, f"bench-{name}")
    before = resource.getrusage(resource.RUSAGE_SELF)
    per_second = round(len(messages) / publish(url, messages), 1)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"bench: {name} {per_second}/s", file=sys.stderr)
    phase_acked(db, f"bench-{name}", len(messages), 300)
    return per_second, round(cpu, 2)


def phase_acked(db: Path, tag: str, count: int, seconds: float) -> None:
    sql = f"SELECT count(*) FROM commands WHERE storm_id = ? AND status IN {FINAL}"
    wait_until(lambda: scalar(db, sql, tag) >= count, seconds, f"every ack of the {tag} phase")
    # The same pause after every phase, whoever publishes next: a storm's process takes
    # about this long to start and plan, and the broker is still writing the last
    # phase's consumer acks to its queue indexes meanwhile.
    time.sleep(SETTLE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--connections", type=int, help="simulator connections")
    parser.add_argument("--max-in-flight", default="100%")
    parser.add_argument("--rounds", type=int, default=3, help="raw/storm turns (best counts)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="setevnt-bench-"))
    vhost = ""
    try:
        with scratch_vhost("setevnt-bench-storm") as url:
            vhost = url.rsplit("/", 1)[1]
            result = bench(args, url, work)
            # Printed before the vhost goes: deleting 10,000 queues may take a while.
            print(json.dumps(result, sort_keys=True), flush=True)
    except OSError as exc:  # the management API's DELETE timed out on a busy broker
        if not vhost:
            raise
        print(f"bench: deleting vhost {vhost} again ({exc})", file=sys.stderr)
        wait_until(lambda: _deleted(vhost), 300, f"vhost {vhost} deleted")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if any(result["targets_met"].values()) else 1


def _deleted(vhost: str) -> bool:
    try:
        management("DELETE", f"/vhosts/{vhost}")
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    except OSError:
        return False
    return True


def bench(args: argparse.Namespace, url: str, work: Path) -> dict[str, Any]:
    db = work / "setevnt.db"
    # The simulated fleet answers for 10,000 clients as one broker user (guest): its acks
    # count only from a trusted sender. Commands go unsigned unless a key is configured.
    env = {"SETEVNT_AMQP_URL": url, "SETEVNT_DB": str(db), "SETEVNT_TRUSTED_SENDERS": "guest"}
    clients = [f"BENCH{n:05d}" for n in range(args.clients)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        serve = start(
            [str(BIN / "setevnt-dispatcher"), "serve", "--metrics-port", "0"],
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
        return measure(args, url, db, env, clients, work) | {
            "collector_peak_rss_mb": round(peak_rss_mb(serve.pid), 1),
            "simulator_peak_rss_mb": round(peak_rss_mb(sim.pid), 1),
        }
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def measure(
    args: argparse.Namespace,
    url: str,
    db: Path,
    env: dict[str, str],
    clients: list[str],
    work: Path,
) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {"raw": [], "raw_fast": []}

    def timed(name: str, publish: Any, kind: str | None = None) -> float:
        rate, seconds = phase(url, db, clients, name, publish)
        if kind is not None:
            cpu[kind].append(seconds)
        return rate

    timed("warm-up", raw)
    naive_rates = [timed("naive-0", naive)]
    # Raw and storm take turns, and the best of each counts: this broker now and then
    # slows to a crawl for a whole pass, whoever publishes (see the module docstring).
    raw_rates, storms, fast_raw_rates, fasts = [], [], [], []
    for turn in range(args.rounds):
        raw_rates.append(timed(f"raw-{turn}", raw, "raw"))
        storms.append(run_storm(env, db, args, work / f"storm-{turn}.log", fast=False))
        fast_raw_rates.append(timed(f"raw-fast-{turn}", raw_fast, "raw_fast"))
        fasts.append(run_storm(env, db, args, work / f"storm-fast-{turn}.log", fast=True))
    naive_rates.append(timed("naive-1", naive))
    naive_rate = max(naive_rates)
    raw_rate, fast_raw_rate = max(raw_rates), max(fast_raw_rates)
    storm, fast = best(storms), best(fasts)
    persistent = summarise(storm, naive_rate, raw_rate)
    quick = summarise(fast, naive_rate, fast_raw_rate)
    return {
        "clients": args.clients,
        "rounds": {
            "raw_per_s": raw_rates,
            "storm_per_s": [s["enqueue_per_second"] for s in storms],
            "raw_fast_per_s": fast_raw_rates,
            "storm_fast_per_s": [s["enqueue_per_second"] for s in fasts],
            "naive_per_s": naive_rates,
        },
        "publisher_cpu_s": {
            "raw": cpu["raw"],
            "storm_process": [s["cpu_s"] for s in storms],
            "raw_fast": cpu["raw_fast"],
            "storm_fast_process": [s["cpu_s"] for s in fasts],
        },
        "naive_per_s": naive_rate,
        "raw_per_s": raw_rate,
        "raw_fast_per_s": fast_raw_rate,
        "confirm_window": {"persistent": CONFIRM_WINDOW, "fast": FAST_CONFIRM_WINDOW},
        **persistent,
        "fast_lane": quick,
        "targets_met": {"persistent": persistent["targets_met"], "fast_lane": quick["targets_met"]},
    }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with the highest peak RSS of all (memory is not a best-of)."""
    fastest = max(runs, key=lambda run: run["enqueue_per_second"] or 0.0)
    return {**fastest, "peak_rss_mb": max(run["peak_rss_mb"] for run in runs)}


def summarise(storm: dict[str, Any], naive_rate: float, raw_rate: float) -> dict[str, Any]:
    """One storm's figures; vs_raw compares with the raw ceiling of the same delivery mode."""
    rate = storm["enqueue_per_second"] or 0.0
    vs_naive = round(rate / naive_rate, 2)
    vs_raw = round(rate / raw_rate, 2)
    all_acked = storm["all_acked_after_s"]
    return {
        "storm_per_s": rate,
        "storm_vs_naive": vs_naive,
        "storm_vs_raw": vs_raw,
        "storm_state": storm["state"],
        "storm_acked": storm["acked"],
        "all_acked_after_s": all_acked,
        "latency_s": storm["latency_s"],
        "dispatcher_peak_rss_mb": storm["peak_rss_mb"],
        "targets_met": bool(
            vs_naive >= 4 and vs_raw >= 0.9 and all_acked is not None and all_acked <= 30
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
