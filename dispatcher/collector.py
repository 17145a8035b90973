"""The ack collector: consume the durable ack queue and feed the metrics hooks.

With a :class:`dispatcher.recorder.Recorder` it also consumes the fleet's heartbeats and
makes both durable (ledger, registry), acking the broker only after they are stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from broker import topology
from broker.connection import close_quietly, open_blocking, translate_errors
from broker.settings import BrokerSettings
from broker.supervisor import supervise
from schemas.codec import DecodeError, decode, decode_any
from schemas.messages import Ack, Heartbeat, Message, PublishReport

if TYPE_CHECKING:
    from dispatcher.recorder import Recorder

log = logging.getLogger(__name__)


class CollectorHooks(Protocol):
    def ack_received(self, ack: Ack, latency: float | None) -> None: ...

    def duplicate_ack(self, ack: Ack) -> None: ...

    def deferred_command_finished(self, ack: Ack, waited: float) -> None: ...

    def publish_report(self, report: PublishReport) -> None: ...

    def bad_message(self, reason: str) -> None: ...

    def reconnected_collector(self) -> None: ...

    def ack_dropped(self, reason: str) -> None: ...

    def heartbeat_dropped(self, reason: str) -> None: ...


class _Seen:
    """Command ids whose final ack was already counted (bounded, oldest forgotten)."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, command_id: str) -> bool:
        """Remember ``command_id``; False when it was already there."""
        if command_id in self._ids:
            self._ids.move_to_end(command_id)
            return False
        self._ids[command_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class Collector:
    """Consumes ``setevnt.acks``; one instance per process, stopped with :meth:`stop`."""

    def __init__(
        self,
        settings: BrokerSettings,
        hooks: CollectorHooks,
        *,
        prefetch: int = 500,
        remember: int = 200_000,
        recorder: Recorder | None = None,
        trusted_senders: frozenset[str] = frozenset(),
    ) -> None:
        self._settings = settings.named("setevnt-collector")
        # Broker users allowed to answer for any client: a simulated fleet's one user, or
        # a development broker's guest. Every other ack must come from its client's user.
        self._trusted = trusted_senders
        self._recorder = recorder
        self._hooks = hooks
        self._prefetch = prefetch
        self._seen = _Seen(remember)
        self._deferred: OrderedDict[str, float] = OrderedDict()  # command id -> first seen
        self._remember = remember
        self._stop = threading.Event()
        self._sessions = 0
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        supervise(self._session, self._stop.is_set, what="collector")

    def handle(self, body: bytes, sender: str | None) -> Message | None:
        """Account for one message from the ack queue sent by broker user ``sender``.

        ``sender`` is the AMQP ``user_id`` property, which the broker validates against
        the publishing connection's user; an ack counts only when it names its client.
        """
        try:
            message = decode_any(body)
        except DecodeError as exc:
            log.warning("dropping undecodable ack-path message: %s", exc)
            self._hooks.bad_message(exc.reason.value)
            return None
        if isinstance(message, Ack) and not self._from_its_client(message, sender):
            return None
        if isinstance(message, Ack):
            self._ack(message)
        elif isinstance(message, PublishReport):
            self._hooks.publish_report(message)
        else:
            self._hooks.bad_message("bad-message")
        return message

    def heartbeat(self, body: bytes, sender: str | None) -> Heartbeat | None:
        """One message from the fleet queue sent by ``sender``; None when it does not count.

        A heartbeat registers its client and gets its queue provisioned, so, like an ack,
        it counts only when the broker-validated sender is that client (or trusted).
        """
        try:
            beat = decode(body, Heartbeat)
        except DecodeError as exc:
            log.warning("dropping undecodable heartbeat: %s", exc)
            self._hooks.bad_message(exc.reason.value)
            return None
        reason = self._not_its_client(beat.client_id, sender)
        if reason is not None:
            log.warning(
                "dropping %s of %s sent by %r: %s", beat.kind, beat.client_id, sender, reason
            )
            self._hooks.heartbeat_dropped(reason)
            return None
        return beat

    def _from_its_client(self, ack: Ack, sender: str | None) -> bool:
        reason = self._not_its_client(ack.client_id, sender)
        if reason is None:
            return True
        log.warning("dropping ack for %s sent by %r: %s", ack.client_id, sender, reason)
        self._hooks.ack_dropped(reason)
        return False

    def _not_its_client(self, client_id: str, sender: str | None) -> str | None:
        """Why a message that speaks for ``client_id`` does not count, or None if it does."""
        if sender is None:
            return "missing-user-id"
        if sender == client_id or sender in self._trusted:
            return None
        return "wrong-user-id"

    def _ack(self, ack: Ack) -> None:
        if ack.final and ack.command_id and not self._seen.add(ack.command_id):
            self._hooks.duplicate_ack(ack)
            return
        latency = None
        if ack.issued_at is not None:
            latency = max(0.0, time.time() - ack.issued_at)
        self._hooks.ack_received(ack, latency)
        self._track_deferral(ack)

    def _track_deferral(self, ack: Ack) -> None:
        if not ack.command_id:
            return
        if not ack.final:
            self._deferred.setdefault(ack.command_id, time.monotonic())
            if len(self._deferred) > self._remember:
                self._deferred.popitem(last=False)
            return
        deferred_at = self._deferred.pop(ack.command_id, None)
        if deferred_at is not None:
            # The agent's own measure when it sent one; else what we saw from here.
            waited = (
                ack.wait_seconds
                if ack.wait_seconds is not None
                else (time.monotonic() - deferred_at)
            )
            self._hooks.deferred_command_finished(ack, waited)

    def _session(self) -> None:
        connection = open_blocking(self._settings)
        self._sessions += 1
        if self._sessions > 1:
            self._hooks.reconnected_collector()
        try:
            with translate_errors("collecting acks"):
                channel = connection.channel()
                topology.declare_core(channel)
                channel.basic_qos(prefetch_count=self._prefetch)
                channel.basic_consume(topology.ACK_QUEUE, self._on_message)
                recorder = self._recorder
                if recorder is not None:
                    recorder.reset()
                    channel.basic_consume(topology.FLEET_QUEUE, self._on_fleet)
                self.ready.set()
                log.info("collecting acks from %s", self._settings.redacted())
                while not self._stop.is_set():
                    connection.process_data_events(
                        time_limit=recorder.flush_every if recorder else 0.5
                    )
                    if recorder is not None:
                        recorder.flush(channel)
        finally:
            self.ready.clear()
            close_quietly(connection)

    def _on_fleet(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        assert self._recorder is not None  # the fleet queue is consumed only with one
        self._recorder.fleet_path(self.heartbeat(body, properties.user_id), method.delivery_tag)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        message = self.handle(body, properties.user_id)
        if self._recorder is not None:
            self._recorder.ack_path(message, method.delivery_tag)  # acked once stored
        else:
            channel.basic_ack(method.delivery_tag)
