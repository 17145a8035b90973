"""The fleet simulator: N simulated clients over K broker connections, in one process.

Each client is a real :class:`agent.handler.Handler` (validation, journal, acks) with the
simulated backend, announces itself with hello heartbeats like an agent (so the
dispatcher registers it and provisions its queue) and consumes its own queue with a
prefetch of one. What differs from N agent processes is only the transport: clients
share the connections of a few :class:`broker.multiplex.Lane` s and one I/O thread, and
signal on a shared worker pool.

A command with a later start (``not_before``, a storm's spread) is acked at once and run
by a timer on the I/O loop, its ack published when it ran, as an agent spools it: no
delivery is held while a start time comes, and no worker either. Unlike an agent's spool
these timers live in memory: a stopped simulator forgets the commands it scheduled.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from agent.backends.simulated import SimulatedBackend
from agent.config import AgentConfig, SecurityConfig
from agent.handler import Delivery, Handler, Run, Settle
from agent.journal import Journal
from agent.outbound import make_heartbeat
from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.multiplex import Lane, LaneDelivery
from broker.settings import BrokerSettings
from schemas.codec import encode
from schemas.messages import Kind
from simulator.setup import UPGRADE_EVENT, CopyLists

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds to finish the commands in hand when stopping
CHECK_EVERY = 0.2


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    clients: int
    connections: int = 1
    prefix: str = "SIM"
    first: int = 0
    groups: tuple[str, ...] = ()
    platform: str = "nt"
    duration: float = 0.02
    failure_rate: float = 0.0
    record: str | None = None
    seed: int | None = None
    hello_interval: float = 60.0
    workers: int = 64
    provision: bool = False
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    # The dispatcher's public key: signed commands are verified as an agent does. None:
    # unsigned commands are accepted and signed ones refused (no key to check them).
    public_key: str | None = None
    # What the clients report as their CopyListVersion, and what after the upgrade event.
    copylist_version: str | None = None
    upgrade_to: str | None = None
    upgrade_event: str = UPGRADE_EVENT

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if not 1 <= self.connections <= 256:
            raise ValueError("--connections must be between 1 and 256")
        if self.hello_interval <= 0 or self.workers < 1:
            raise ValueError("--hello-interval and --workers must be positive")

    def client_ids(self) -> list[str]:
        width = max(5, len(str(self.first + self.clients - 1)))
        return [f"{self.prefix}{n:0{width}d}" for n in range(self.first, self.first + self.clients)]


class Simulation:
    """Runs on the calling thread until :meth:`stop` (safe from signal handlers)."""

    def __init__(self, settings: SimulationSettings) -> None:
        self.settings = settings
        self._broker = Broker(settings.broker)
        self._loop = self._broker.loop()
        self._copylists = CopyLists(
            settings.copylist_version, settings.upgrade_to, settings.upgrade_event
        )
        backend = self._copylists.backend(
            SimulatedBackend(
                duration=settings.duration,
                failure_rate=settings.failure_rate,
                record=settings.record,
                seed=settings.seed,
            )
        )
        self._handlers: dict[str, Handler] = {}
        self._lane_of: dict[str, Lane] = {}
        # A broker per lane, for its connections' name; each closes with the simulator's.
        self._lane_brokers = [
            self._broker.named(f"setevnt-simulator {n}") for n in range(settings.connections)
        ]
        self._lanes = [self._lane(broker) for broker in self._lane_brokers]
        security = None
        if settings.public_key:
            security = SecurityConfig(public_keys=(settings.public_key,))
        for index, client_id in enumerate(settings.client_ids()):
            config = AgentConfig(
                client_id=client_id,
                platform=settings.platform,
                groups=settings.groups,
                broker=settings.broker,
                hello_interval=settings.hello_interval,
                security=security,
                catalog=self._copylists.catalog(),
            )
            queue = topology.client_queue(client_id)
            self._handlers[queue] = Handler(config, backend, Journal(None))
            self._lane_of[queue] = self._lanes[index % len(self._lanes)]
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="simulated")
        self._finished: deque[Callable[[], None]] = deque()  # run on the loop, in order
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._executing = 0
        self._stop = threading.Event()
        self._stopping_since: float | None = None
        self._announced_ready = False
        self._said_goodbye = False
        self._beat_cursor = 0
        self._beat_credit = 0.0
        self.error: BrokerError | None = None
        self.handled = 0

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        log.info(
            "simulating %d clients over %d connection(s)",
            self.settings.clients,
            len(self._lanes),
        )
        try:
            if self.settings.provision:
                self._declare_core()
            for queue, lane in self._lane_of.items():
                lane.add(queue)
            for lane in self._lanes:
                lane.start()
            self._loop.call_later(CHECK_EVERY, self._check)
            self._loop.run()
        except BrokerError as exc:
            self.error = exc
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._broker.close()  # the lanes (closed already unless it failed) and the loop
        log.info("simulator stopped after handling %d command(s)", self.handled)

    def stop(self) -> None:
        self._stop.set()

    def _declare_core(self) -> None:
        """Provisioning here, without a dispatcher: the shared exchanges too."""
        with self._broker.named("setevnt-simulator (declare)") as declaring:
            declaring.declare_topology()

    # -- lanes --------------------------------------------------------------------------

    def _lane(self, broker: Broker) -> Lane:
        return broker.lane(
            self._loop,
            self._on_delivery,
            declare=self.settings.provision,
            on_fatal=self._on_fatal,
            on_ready=self._on_lane_ready,
        )

    def _on_fatal(self, error: BrokerError) -> None:
        self.error = error
        self._stop.set()

    def _on_lane_ready(self, lane: Lane) -> None:
        """A (re)connected lane: its clients say hello, as an agent does per session."""
        for queue, owner in self._lane_of.items():
            if owner is lane:
                self._beat(lane, self._handlers[queue].config, Kind.HELLO)

    def _beat(self, lane: Lane, config: AgentConfig, kind: Kind) -> None:
        beat = make_heartbeat(config, kind, self._copylists.version(config.client_id))
        lane.publish(
            topology.ACK_EXCHANGE,
            topology.hello_routing_key(config.client_id),
            encode(beat),
            message_type=beat.WIRE_TYPE,
            persistent=False,
        )

    # -- deliveries (loop thread) -------------------------------------------------------

    def _on_delivery(self, lane: Lane, incoming: LaneDelivery) -> None:
        handler = self._handlers[incoming.queue]
        delivery = Delivery.received_now(incoming.body, incoming.message_id, incoming.headers)
        verdict = handler.admit(delivery)
        if isinstance(verdict, Settle):
            self._answer(lane, incoming, handler, verdict.ack, verdict.dead_letter)
            return
        assert isinstance(verdict, Run)
        command, delay = verdict.command, 0.0
        if command.not_before is not None:
            delay = min(command.not_before, command.expires_at) - time.time()
        if delay <= 0:
            self._submit(lane, incoming, handler, verdict, delivery)
            return
        lane.settle(incoming)  # taken: the delivery is not held while the start time comes
        run = _bind(self._run_scheduled, lane, incoming, handler, verdict, delivery)
        self._loop.call_later(delay, run)

    def _submit(
        self, lane: Lane, incoming: LaneDelivery, handler: Handler, run: Run, delivery: Delivery
    ) -> None:
        if self._stopping_since is not None:
            lane.settle(incoming, requeue=True)  # stopping: leave it for the next run
            return
        self._executing += 1
        self._pool.submit(self._execute, lane, incoming, handler, run, delivery, False)

    def _run_scheduled(
        self, lane: Lane, incoming: LaneDelivery, handler: Handler, run: Run, delivery: Delivery
    ) -> None:
        if self._stopping_since is not None:
            log.info("stopping: %s is not run (scheduled)", run.command.command_id)
            return
        self._executing += 1
        self._pool.submit(self._execute, lane, incoming, handler, run, delivery, True)

    def _execute(
        self,
        lane: Lane,
        incoming: LaneDelivery,
        handler: Handler,
        run: Run,
        delivery: Delivery,
        scheduled: bool,
    ) -> None:
        """Worker thread: signal through the handler, then wake the loop to answer."""
        done: Callable[[], None]
        try:
            ack = handler.execute(run.command, delivery)
            if scheduled:  # its delivery was acked when it was scheduled
                done = partial(self._publish_late, lane, handler, ack) if ack else _nothing
            else:
                done = partial(self._answer, lane, incoming, handler, ack, False)
        except Exception:  # execute answers its own failures: this is a bug in that
            log.exception("handling %s failed unexpectedly", run.command.command_id)
            done = _nothing if scheduled else partial(lane.settle, incoming, dead_letter=True)
        self._finished.append(done)
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        while self._finished:
            done = self._finished.popleft()
            self._executing -= 1
            done()

    def _answer(
        self,
        lane: Lane,
        incoming: LaneDelivery,
        handler: Handler,
        ack: bytes | None,
        dead_letter: bool,
    ) -> None:
        self.handled += 1
        if ack is None:
            lane.settle(incoming, dead_letter=dead_letter)
            return
        key = topology.ack_routing_key(handler.config.client_id)
        lane.answer(incoming, (topology.ACK_EXCHANGE, key, ack), dead_letter)

    def _publish_late(self, lane: Lane, handler: Handler, ack: bytes) -> None:
        """The ack of a scheduled command: no delivery to settle, so retried until confirmed
        (or until the simulator stops)."""
        self.handled += 1
        key = topology.ack_routing_key(handler.config.client_id)

        def attempt(retry: bool) -> None:
            if retry and self._stop.is_set():
                return
            published = lane.publish(
                topology.ACK_EXCHANGE, key, ack, message_type="ack", on_confirm=confirmed
            )
            if not published:  # the lane is reconnecting
                self._loop.call_later(1.0, lambda: attempt(True))

        def confirmed(acked: bool) -> None:
            if not acked:
                self._loop.call_later(1.0, lambda: attempt(True))

        attempt(False)

    # -- periodic -----------------------------------------------------------------------

    def _check(self) -> None:
        if self._stop.is_set():
            self._stopping()
            return
        self._heartbeats()
        if not self._announced_ready:
            consuming = sum(len(lane.consuming) for lane in self._lanes)
            if consuming == self.settings.clients:
                self._announced_ready = True
                log.info("all %d clients consuming", consuming)
        self._loop.call_later(CHECK_EVERY, self._check)

    def _heartbeats(self) -> None:
        """Spread heartbeats evenly over the interval instead of sending them in bursts."""
        queues = list(self._handlers)
        self._beat_credit += len(queues) * CHECK_EVERY / self.settings.hello_interval
        due, self._beat_credit = math.floor(self._beat_credit), self._beat_credit % 1
        for _ in range(min(due, len(queues))):
            queue = queues[self._beat_cursor % len(queues)]
            self._beat_cursor += 1
            lane = self._lane_of[queue]
            if lane.ready:
                self._beat(lane, self._handlers[queue].config, Kind.HEARTBEAT)

    def _stopping(self) -> None:
        """Stop consuming, finish what is in hand, say goodbye, close, leave the loop."""
        now = time.monotonic()
        if self._stopping_since is None:
            self._stopping_since = now
            log.info("stopping: finishing %d command(s) in hand", self._executing)
            for lane in self._lanes:
                lane.pause()
        busy = self._executing > 0 and now - self._stopping_since < STOP_GRACE
        if busy:
            self._loop.call_later(CHECK_EVERY, self._check)
            return
        if not self._said_goodbye:
            self._said_goodbye = True
            for queue, handler in self._handlers.items():
                lane = self._lane_of[queue]
                if lane.ready:
                    self._beat(lane, handler.config, Kind.GOODBYE)
        unconfirmed = sum(lane.unconfirmed for lane in self._lanes if lane.ready)
        if unconfirmed and now - self._stopping_since < STOP_GRACE + 3:
            self._loop.call_later(CHECK_EVERY, self._check)
            return
        for lane in self._lanes:
            lane.close()
        self._loop.call_later(CHECK_EVERY, self._wait_closed)

    def _wait_closed(self) -> None:
        if all(lane.closed for lane in self._lanes):
            self._loop.stop()
        else:
            self._loop.call_later(CHECK_EVERY, self._wait_closed)


def _bind(function: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: function(*args)


def _nothing() -> None:
    pass
