"""The agent daemon: consume this client's queue, signal through a worker, ack back.

Per delivery: decode and validate (I/O thread) -> signal the component (worker thread,
so pika's I/O loop keeps answering heartbeats) -> journal the result (fsync) -> publish
the ack and wait for its confirm -> ack the delivery. A crash anywhere before the last
step gets the command redelivered; the journal then answers it without signalling again.

Commands that wait (agent.deferral: for a distribution to end, or for their start time)
take another path: the delivery is acked once the command is spooled, and a release pass
on the worker later hands each ack back here to publish; once a final one is out the
spool entry is removed. No delivery is ever held while something waits.

Nothing a message holds stops the agent: whatever escapes the handling of a delivery is
logged, the delivery dead-lettered and counted, and consuming goes on; whatever goes
wrong on the worker is answered ``failed`` by the handler. Nor does a broker that stops
answering: a loop that has not come back for ``stall_timeout`` ends the process for its
service manager to restart (broker.watchdog).
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from agent.config import AgentConfig
from agent.copylist import CopyListVersion
from agent.deferral import Released, Releaser
from agent.handler import Delivery, Handler, Run, Settle
from agent.metrics import AgentMetrics
from agent.outbound import make_heartbeat
from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.session import Incoming, Session
from broker.supervisor import supervise
from broker.watchdog import Watchdog
from schemas.codec import encode
from schemas.messages import Kind

log = logging.getLogger(__name__)

LOOP = "broker"  # the one loop the watchdog watches: consuming, answering, heartbeats


class Agent:
    def __init__(self, config: AgentConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._queue = topology.client_queue(config.client_id)
        self._stop = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signal")
        self._broker = Broker(config.broker)
        self._watchdog = Watchdog(config.stall_timeout, f"agent {config.client_id}")
        self._session: Session | None = None
        self._generation = 0  # which session a worker's result belongs to
        self._inflight: set[int] = set()
        # The session generation whose release pass is queued, running or publishing.
        self._releasing: int | None = None
        self._releaser = (
            Releaser(handler.deferrals, self._request_release) if handler.deferrals else None
        )
        self.ready = threading.Event()
        self._metrics: AgentMetrics | None = None
        self._copylist = CopyListVersion.of(config)

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        if self.config.metrics_port is not None:
            self._metrics = AgentMetrics(
                self.config.metrics_port, self.config.metrics_addr, self.config.catalog
            )
        if self._releaser is not None:
            self._releaser.start()
        self._watchdog.start()
        try:
            supervise(self._run_session, self._stop.is_set, what=f"agent {self.config.client_id}")
        finally:
            self._watchdog.close()
            if self._releaser is not None:
                self._releaser.close()
            if self._metrics is not None:
                self._metrics.close()
        self._worker.shutdown(wait=True)
        log.info("agent %s stopped", self.config.client_id)

    def stop(self) -> None:
        """Finish the command in hand, then leave (safe from signal handlers and threads)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: finishing the command in hand, then exiting", signum)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if sys.platform != "win32":
            # kill -USR1 prints every thread's stack: where an agent that will not stop waits.
            faulthandler.register(signal.SIGUSR1, all_threads=True)

    # -- one broker session ---------------------------------------------------------------

    def _run_session(self) -> None:
        self._watchdog.beat(LOOP)  # opening and the first publishes are watched too
        try:
            self._one_session()
        finally:
            self._watchdog.disarm(LOOP)

    def _one_session(self) -> None:
        session = self._broker.session(prefetch=1)
        session.open()
        broker = self.config.broker
        # Who it is to the broker: acks from another user than the client's own are dropped.
        log.info(
            "agent %s connected as broker user %s to %s",
            self.config.client_id,
            broker.username,
            broker.redacted(),
        )
        self._generation += 1
        self._session = session
        self._inflight.clear()
        try:
            self._hello(session, Kind.HELLO)
            consumer = session.consume(self._queue, self._on_message)
            self.ready.set()
            log.info("agent %s consuming %s", self.config.client_id, self._queue)
            self._loop(session, consumer)
            self._hello(session, Kind.GOODBYE)
        finally:
            self.ready.clear()
            self._session = None
            session.close()

    def _loop(self, session: Session, consumer: str | None) -> None:
        next_hello = time.monotonic() + self.config.hello_interval
        while True:
            self._watchdog.beat(LOOP)
            session.pump(0.5)
            if time.monotonic() >= next_hello:
                self._hello(session, Kind.HEARTBEAT)
                next_hello = time.monotonic() + self.config.hello_interval
            if self._stop.is_set():
                if consumer is not None:
                    session.cancel(consumer)  # no new deliveries; unstarted ones requeue
                    consumer = None
                if not self._inflight and self._releasing != self._generation:
                    return

    def _hello(self, session: Session, kind: Kind) -> None:
        beat = make_heartbeat(
            self.config, kind, self._copylist.read(), self.config.component_versions
        )
        session.publish(
            topology.ACK_EXCHANGE,
            topology.hello_routing_key(self.config.client_id),
            encode(beat),
            message_type=beat.WIRE_TYPE,
            persistent=False,
        )

    # -- deliveries -----------------------------------------------------------------------

    def _on_message(self, incoming: Incoming) -> None:
        try:
            self._admit(incoming)
        except BrokerError:
            raise  # the session's trouble: it is rebuilt and the delivery comes again
        except Exception:
            log.exception(
                "delivery %d could not be handled: dead-lettering it", incoming.delivery_tag
            )
            self._inflight.discard(incoming.delivery_tag)
            self._poisoned(incoming.delivery_tag)

    def _admit(self, incoming: Incoming) -> None:
        delivery = Delivery.received_now(incoming.body, incoming.message_id, incoming.headers)
        verdict = self.handler.admit(delivery)
        if isinstance(verdict, Settle):
            self._answer(incoming.delivery_tag, verdict.ack, verdict.dead_letter)
            return
        assert isinstance(verdict, Run)
        self._inflight.add(incoming.delivery_tag)
        self._worker.submit(
            self._execute, self._generation, incoming.delivery_tag, verdict, delivery
        )

    def _execute(self, generation: int, tag: int, run: Run, delivery: Delivery) -> None:
        """Worker thread: signal (or spool), then hand the answer back to the I/O thread."""
        try:
            ack = self.handler.execute(run.command, delivery)
            settle = functools.partial(self._finish, generation, tag, ack)
        except Exception:  # execute answers its own failures; this is a bug in that
            log.exception("handling %s failed unexpectedly", run.command.command_id)
            settle = functools.partial(self._drop, generation, tag)
        session = self._session
        if session is None or generation != self._generation:
            return  # that session is gone: the redelivery is answered from the journal
        session.call_threadsafe(settle)

    def _finish(self, generation: int, tag: int, ack: bytes | None) -> None:
        if generation != self._generation:
            return
        self._inflight.discard(tag)
        self._answer(tag, ack, dead_letter=False)

    def _drop(self, generation: int, tag: int) -> None:
        if generation != self._generation:
            return
        self._inflight.discard(tag)
        self._poisoned(tag)

    def _poisoned(self, tag: int) -> None:
        if self._metrics is not None:
            self._metrics.poisoned()
        assert self._session is not None
        self._session.settle(tag, dead_letter=True)

    def _answer(self, tag: int, ack: bytes | None, dead_letter: bool) -> None:
        session = self._session
        assert session is not None
        if ack is not None:  # None: spooled to start later, nothing to say yet
            self._publish_ack(session, ack)
        session.settle(tag, dead_letter=dead_letter)

    def _publish_ack(self, session: Session, ack: bytes) -> None:
        session.publish(
            topology.ACK_EXCHANGE,
            topology.ack_routing_key(self.config.client_id),
            ack,
            message_type="ack",
        )
        if self._metrics is not None:
            self._metrics.answered(ack)

    # -- deferred commands ----------------------------------------------------------------

    def _request_release(self) -> None:
        """Releaser thread: queue a release pass on the worker unless one is under way."""
        generation = self._generation
        session = self._session
        if session is None or generation != self._generation:
            return  # between sessions
        if self._releasing == generation or self._stop.is_set():
            return
        self._releasing = generation  # a pass of an older session does not block this one
        self._worker.submit(self._release, session, generation)

    def _release(self, session: Session, generation: int) -> None:
        """Worker thread: run the pass, handing each ack to the I/O thread."""

        def hand_over(answer: Released) -> bool:
            if generation != self._generation:
                return False  # the next session's pass answers it from the journal
            return session.call_threadsafe(functools.partial(self._released, generation, answer))

        try:
            self.handler.release(hand_over)
        except Exception:  # like _execute: the spool keeps the command for the next pass
            log.exception("releasing deferred commands failed unexpectedly")
        finally:
            session.call_threadsafe(functools.partial(self._release_done, generation))

    def _released(self, generation: int, answer: Released) -> None:
        if generation != self._generation or self._session is None:
            return
        self._publish_ack(self._session, answer.ack)
        if answer.final:
            assert self.handler.deferrals is not None
            self.handler.deferrals.spool.remove(answer.entry)  # only now: its final ack is out

    def _release_done(self, generation: int) -> None:
        if self._releasing == generation:
            self._releasing = None
