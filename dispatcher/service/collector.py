"""The ack collector: consume the ack and fleet queues, record what counts, feed the metrics.

Every message is hostile until proven otherwise: it is decoded (any failure is a
:class:`schemas.codec.DecodeError`), its sender checked (:mod:`dispatcher.service.senders`), and
only then handed to the :class:`dispatcher.service.recorder.Recorder`, which makes it durable and
calls the metrics hooks. Whatever else a message makes go wrong is caught, logged and
counted; the message is dropped and consuming goes on. Messages are acknowledged to the
broker in batches once the database committed them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from broker import topology
from broker.broker import Broker
from broker.connection import translate_errors
from broker.consumer import Consumer
from broker.errors import ConnectionLost
from broker.session import Incoming
from broker.settings import BrokerSettings
from broker.supervisor import supervise
from dispatcher.cli.logs import Throttled
from dispatcher.service.recorder import Recorder
from dispatcher.service.senders import Senders
from schemas.codec import DecodeError, decode, decode_any
from schemas.messages import Ack, Heartbeat, Issued, PublishReport

log = logging.getLogger(__name__)

# Seconds without a delivery after which the collector counts what waits in its queues.
STALL_AFTER = 10.0


class CollectorHooks(Protocol):
    def bad_message(self, reason: str) -> None: ...

    def reconnected_collector(self) -> None: ...

    def ack_dropped(self, reason: str, count: int = 1) -> None: ...

    def heartbeat_dropped(self, reason: str) -> None: ...

    def report_dropped(self, reason: str) -> None: ...


class StallWatch:
    """Tells a consumer that gets nothing while its queues hold messages.

    A consumer can be left receiving nothing though its connection lives (seen on a
    cluster after a node was killed); consuming again on a new connection ends that,
    whatever the cause. Every ``after`` seconds without a delivery, the queues are counted.
    """

    def __init__(self, after: float = STALL_AFTER) -> None:
        self._after = after
        self._seen = -1
        self._since = time.monotonic()

    def check(self, deliveries: int, consumer: Consumer) -> None:
        now = time.monotonic()
        if deliveries != self._seen:
            self._seen, self._since = deliveries, now
            return
        if now - self._since < self._after:
            return
        self._since = now
        waiting = sum(consumer.waiting(q) for q in (topology.ACK_QUEUE, topology.FLEET_QUEUE))
        if waiting:
            raise ConnectionLost(
                f"no delivery for {self._after:.0f} s while {waiting} message(s) wait"
            )


class Collector:
    """Consumes ``setevnt.acks`` and ``setevnt.fleet``; one per process, stopped with
    :meth:`stop`."""

    def __init__(
        self,
        settings: BrokerSettings,
        hooks: CollectorHooks,
        recorder: Recorder,
        *,
        prefetch: int = 500,
        senders: Senders | None = None,
    ) -> None:
        self._broker = Broker(settings, name="setevnt-collector")
        self._senders = senders or Senders.from_env(settings.username)
        self._recorder = recorder
        self._hooks = hooks
        self._prefetch = prefetch
        self._stop = threading.Event()
        self._sessions = 0
        self._deliveries = 0
        self._warn = Throttled(log)
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        supervise(self._session, self._stop.is_set, what="collector")

    # -- one message (the collector's thread) --------------------------------------------

    def take(self, body: bytes, sender: str | None) -> None:
        """One message from the ack queue, sent by broker user ``sender`` (the AMQP
        ``user_id``, which the broker validates)."""
        try:
            message = decode_any(body)
        except DecodeError as exc:
            self._bad(exc.reason.value, exc)
            return
        if isinstance(message, Ack):
            self._take_ack(message, sender)
        elif isinstance(message, (PublishReport, Issued)):
            self._take_report(message, sender)
        else:
            self._bad("unexpected-type", f"a {message.WIRE_TYPE} on the ack path")

    def take_heartbeat(self, body: bytes, sender: str | None) -> None:
        """One message from the fleet queue: a heartbeat counts only from its own client."""
        try:
            beat = decode(body, Heartbeat)
        except DecodeError as exc:
            self._bad(exc.reason.value, exc)
            return
        reason = self._senders.not_for(beat.client_id, sender)
        if reason is not None:
            self._warn.warning(
                reason,
                "dropping %s of %s sent by %r: %s",
                beat.kind,
                beat.client_id,
                sender,
                reason,
            )
            self._hooks.heartbeat_dropped(reason)
            return
        self._recorder.heartbeat(beat, time.time())

    def _take_ack(self, ack: Ack, sender: str | None) -> None:
        reason = self._senders.not_for(ack.client_id, sender)
        if reason is not None:
            self._warn.warning(
                reason, "dropping an ack for %s sent by %r: %s", ack.client_id, sender, reason
            )
            self._hooks.ack_dropped(reason)
            return
        self._recorder.ack(ack, time.time())

    def _take_report(self, report: PublishReport | Issued, sender: str | None) -> None:
        if not self._senders.is_dispatcher(sender):
            self._warn.warning(
                "report", "dropping a %s sent by %r: not a dispatcher", report.WIRE_TYPE, sender
            )
            self._hooks.report_dropped("not-a-dispatcher")
            return
        self._recorder.report(report, time.time())

    def _bad(self, reason: str, what: object) -> None:
        self._warn.warning(reason, "dropping a message on the ack path: %s", what)
        self._hooks.bad_message(reason)

    # -- the broker session ---------------------------------------------------------------

    def _session(self) -> None:
        consumer = self._broker.consumer(prefetch=self._prefetch)
        consumer.open("collecting acks")
        self._sessions += 1
        if self._sessions > 1:
            self._hooks.reconnected_collector()
        recorder = self._recorder
        try:
            recorder.reset()
            consumer.consume(topology.ACK_QUEUE, self._on_ack_path)
            consumer.consume(topology.FLEET_QUEUE, self._on_fleet_path)
            self.ready.set()
            log.info("collecting acks from %s", self._broker.settings.redacted())
            stall = StallWatch()
            with translate_errors("collecting acks"):  # what flushing provisions or re-sends
                while not self._stop.is_set():
                    consumer.pump(recorder.flush_every, "collecting acks")
                    recorder.flush(consumer.ack_through)
                    if not recorder.holding:  # a full prefetch is no stall
                        stall.check(self._deliveries, consumer)
        finally:
            self.ready.clear()
            consumer.close()

    def _on_ack_path(self, message: Incoming) -> None:
        self._deliveries += 1
        self._guarded(self.take, message)
        self._recorder.delivered(message.delivery_tag)

    def _on_fleet_path(self, message: Incoming) -> None:
        self._deliveries += 1
        self._guarded(self.take_heartbeat, message)
        self._recorder.delivered(message.delivery_tag)

    def _guarded(self, take: Callable[[bytes, str | None], None], message: Incoming) -> None:
        """Whatever a message makes go wrong here drops that message, not the collector."""
        try:
            take(message.body, message.user_id)
        except Exception:
            log.exception("dropping a message that could not be handled")
            self._hooks.bad_message("unhandled")
