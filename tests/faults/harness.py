"""What the fault tests share besides the tally: an ack tap and control of the broker.

:class:`AckTap` is a durable queue of the test's own, bound to the ack exchange like the
collector's ``setevnt.acks``: it sees every ack the fleet publishes, keeps them across
connection cuts and broker restarts (agents publish acks persistent), and is read on a
background thread that reconnects by itself. It is the "ack stream" of the tallies.

The broker functions drive the machine's own RabbitMQ with ``rabbitmqctl``. Every test
that uses them is marked ``exclusive`` (it runs alone, never beside another worker's
tests), restores the broker in a ``finally`` (other tests share it) and waits until it is
fully back: ``await_startup``, the AMQP port and the management API.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from broker import topology
from schemas.codec import DecodeError, decode_any
from schemas.messages import Ack
from tests.conftest import BROKER_HOST, management
from tests.faults.tally import final_acks
from tests.integration.fleet import Fleet
from tests.integration.helpers import Process, channel, wait_for

TAP_QUEUE = "faults.tap"
# How long a restore keeps trying to bring the broker's app back.
RESTORE_TIMEOUT = 240.0


@dataclass(frozen=True, slots=True)
class Received:
    ack: Ack
    at: float  # wall clock, when the tap got it


class AckTap:
    def __init__(self, url: str) -> None:
        self.url = url
        connection, ch = channel(url)
        try:
            topology.declare_core(ch)
            ch.queue_declare(TAP_QUEUE, durable=True, arguments={"x-queue-type": "classic"})
            ch.queue_bind(TAP_QUEUE, topology.ACK_EXCHANGE, routing_key=f"{topology.ACK_KEY}.#")
        finally:
            connection.close()
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._bodies: set[bytes] = set()
        self._stop = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="ack-tap", daemon=True)
        self._thread.start()

    # -- reading ------------------------------------------------------------------------

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def acks(self) -> list[Ack]:
        return [r.ack for r in self.received()]

    def finals(self) -> tuple[dict[str, str], int]:
        """Command id -> final status, and how many final acks were repeats."""
        return final_acks(self.acks())

    def wait_finals(
        self,
        command_ids: set[str],
        timeout: float,
        *,
        alive: Iterable[Process] = (),
        explain: Callable[[list[str]], str] | None = None,
    ) -> dict[str, str]:
        """Wait until every command has a final ack; fail at once if a process died.

        ``explain(missing)`` adds what the test knows about the commands still missing
        (where they are, what ran) to the failure, for a fault that shows up rarely.
        """
        watched = list(alive)

        def answered() -> dict[str, str] | None:
            for process in watched:
                if process.proc.poll() is not None:
                    raise AssertionError(f"{process.argv[2:4]} died:\n{process.output[-3000:]}")
            finals, _ = self.finals()
            return finals if command_ids <= set(finals) else None

        try:
            result: dict[str, str] = wait_for(answered, timeout, "final acks")
        except AssertionError:
            missing = sorted(command_ids - set(self.finals()[0]))
            detail = f"\n{explain(missing)}" if explain is not None else ""
            raise AssertionError(
                f"{len(missing)} of {len(command_ids)} commands without a final ack after "
                f"{timeout} s, e.g. {missing[:5]}{detail}"
            ) from None
        return result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- the consuming thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            connection = None
            try:
                connection = pika.BlockingConnection(pika.URLParameters(self.url))
                ch = connection.channel()
                ch.basic_qos(prefetch_count=1000)
                ch.basic_consume(TAP_QUEUE, self._on_message)
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.1)
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1
                self._stop.wait(0.2)
            finally:
                if connection is not None and connection.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()

    def _on_message(self, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            message = decode_any(body)
        except DecodeError:
            message = None
        with self._lock:
            # A redelivery of what this tap already has (its own ack to the broker was lost
            # with a connection) is not a second ack from the agent.
            seen = method.redelivered and body in self._bodies
            if isinstance(message, Ack) and not seen:
                self._received.append(Received(message, time.time()))
                self._bodies.add(body)
        ch.basic_ack(method.delivery_tag)


# -- the machine's broker ---------------------------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 90) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout.strip()


def app_running() -> bool:
    return rabbitmqctl("eval", "rabbit:is_running().") == "true"


def wait_broker_ready(timeout: float = 90) -> None:
    """The broker is back for everyone: app started, AMQP port open, management answering."""
    rabbitmqctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 30)

    def port_open() -> bool:
        try:
            with socket.create_connection((BROKER_HOST, 5672), timeout=2):
                return True
        except OSError:
            return False

    def management_up() -> bool:
        try:
            return bool(management("GET", "/overview", timeout=5))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    wait_for(port_open, timeout, "the AMQP port")
    wait_for(management_up, timeout, "the management API")


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold off pytest-timeout's alarm (``timeout_method = signal``) while inside.

    A restore the test's timer cut short left the machine's broker stopped, and every
    test after it failed on a refused connection. The restores have deadlines of their
    own; a timer that fired meanwhile fails the test as soon as they are done.
    """
    remaining, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    started = time.monotonic()
    try:
        yield
    finally:
        if remaining:
            left = remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)


def start_app_again(timeout: float = RESTORE_TIMEOUT) -> None:
    """Start the broker's app if it is not running, until it is fully back or time is up.

    ``rabbitmqctl`` fails now and then while the node is still stopping (the app's
    state is not yet known, or a command times out), so each step is tried again.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not app_running():
                rabbitmqctl("start_app")
            wait_broker_ready()
            return
        except (RuntimeError, AssertionError, subprocess.TimeoutExpired) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker is not back after {timeout} s: {exc}") from exc
            time.sleep(2)


def refuse_a_restart_it_may_not_survive() -> None:
    """Fail before the broker is touched if it holds more queues than it has descriptors.

    A classic queue recovers its index through a file handle: the machine's broker (1,024
    descriptors) holding 10,000 queues of one message each, as a killed benchmark leaves
    them, hung in ``start_app`` (and in a cold start) with no CPU in use, until it was
    started with 20,000. Every test after this one would then fail on a refused connection.
    """
    queues = management("GET", "/overview")["object_totals"]["queues"]
    nodes = management("GET", "/nodes?columns=fd_total")
    descriptors = min(node["fd_total"] for node in nodes)
    if queues > descriptors:
        vhosts = [v["name"] for v in management("GET", "/vhosts?columns=name")]
        pytest.fail(
            f"the broker holds {queues} queues and has {descriptors} file descriptors: "
            f"a restart may never finish. Vhosts: {', '.join(vhosts)}; delete what a "
            "killed run left (setevnt-bench-*, setevnt-test-*) and run again.",
            pytrace=False,
        )


@contextlib.contextmanager
def restores_broker() -> Iterator[None]:
    """Whatever happens inside, the broker's app runs again afterwards."""
    refuse_a_restart_it_may_not_survive()
    try:
        yield
    finally:
        with uninterrupted():
            start_app_again()


def memory_watermark() -> list[str]:
    """The current high watermark, as arguments for ``set_vm_memory_high_watermark``."""
    text = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    absolute = re.fullmatch(r'\{absolute,\s*"?([^"}]+)"?\}', text)
    if absolute:
        return ["absolute", absolute.group(1)]
    if not re.fullmatch(r"[0-9.]+(e-?[0-9]+)?", text):
        raise RuntimeError(f"unexpected memory watermark {text!r}")
    return [text]


def memory_alarm_on() -> bool:
    return "memory" in rabbitmqctl("eval", "rabbit_alarm:get_alarms().")


@contextlib.contextmanager
def memory_alarm(low: str = "0.000001", timeout: float = 30) -> Iterator[Callable[[], None]]:
    """Raise the broker's memory alarm; yields a function that clears it early.

    The original watermark is read first and restored in every case (the alarm blocks
    every publisher on the machine's broker, not only this test's).
    """
    original = memory_watermark()
    cleared = False

    def clear() -> None:
        nonlocal cleared
        if cleared:
            return
        rabbitmqctl("set_vm_memory_high_watermark", *original)  # if this fails, again later
        cleared = True
        wait_for(lambda: not memory_alarm_on(), timeout, "the memory alarm to clear")

    try:
        rabbitmqctl("set_vm_memory_high_watermark", low)
        wait_for(memory_alarm_on, timeout, "the memory alarm")
        yield clear
    finally:
        with uninterrupted():
            clear()
        assert memory_watermark() == original, "memory watermark not restored"


def queue_depths(url: str, queues: Iterable[str]) -> dict[str, str]:
    """Queue -> "ready R, unacked U, consumers C" from the management API."""
    vhost = urllib.parse.quote(urllib.parse.unquote(urllib.parse.urlsplit(url).path[1:]), safe="")
    depths = {}
    for queue in queues:
        try:
            info = management("GET", f"/queues/{vhost}/{urllib.parse.quote(queue, safe='')}")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            depths[queue] = f"unknown ({exc})"
            continue
        depths[queue] = (
            f"ready {info.get('messages_ready')}, unacked {info.get('messages_unacknowledged')}, "
            f"consumers {info.get('consumers')}"
        )
    return depths


def finished_runs(record: Path) -> int:
    """How many runs the simulated backend finished so far (cheap enough to poll)."""
    try:
        return record.read_bytes().count(b'"phase": "finish"')
    except FileNotFoundError:
        return 0


def start_storm(fleet: Fleet, targets: Path, *options: str) -> Process:
    """``setevnt-dispatcher storm CCIM32_STARTCYCLE --clients-file TARGETS``, running."""
    return fleet.start_storm(
        "CCIM32_STARTCYCLE", "--clients-file", str(targets), *options, "--json"
    )


def wait_finished(record: Path, count: int, timeout: float) -> int:
    """Wait until the simulated backend finished ``count`` runs; returns how many it has."""
    done: int = wait_for(
        lambda: finished_runs(record) if finished_runs(record) >= count else 0,
        timeout,
        f"{count} finished runs in {record.name}",
    )
    return done
