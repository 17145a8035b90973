"""Many consumers over few connections: one process standing in for many agents.

A real agent has two connections of its own (:mod:`broker.session`). A process that
consumes thousands of client queues (the fleet simulator, :mod:`simulator.fleet`) would
need twice as many connections that way, and a broker has a bounded number of file
descriptors, so it multiplexes: a :class:`Lane` is one consuming and one publishing
connection (consuming and publishing stay apart for the same reason as in a real agent:
a memory alarm blocks publishers), every queue is one consumer with a prefetch of one,
and all lanes share one pika I/O loop (:class:`Loop`) on one thread. Work is handed back
to that thread with :meth:`Loop.call_threadsafe`.

A lane consumes only once both connections are ready, so every command it takes can be
answered. A queue is consumed only once a declare says it exists: passive by default
(the dispatcher provisions a queue when the client's hello arrives), or a real declare
when the lane provisions queues itself. A missing queue closes only the lane's probe
channel, which is reopened after a pause, never the channel that consumes. On a
cluster, a queue whose node went down cancels its consumer and answers the probe "home
node is down": it is probed again, behind the others, until its node is back.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pika.adapters.select_connection import IOLoop

from broker import topology
from broker.confirms import Unconfirmed, read_confirm
from broker.connection import message_properties, open_async, parameters, translate
from broker.errors import BrokerError, BrokerRefused
from broker.queue_probe import QueueState, classify_not_found
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# A queue not provisioned yet: wait this long before asking again (the dispatcher
# provisions in the order hellos arrive, so the next queues are missing too).
PROBE_PAUSE = 0.3
MAX_BACKOFF = 5.0  # a simulator should be back soon after its broker


@dataclass(frozen=True, slots=True)
class LaneDelivery:
    queue: str
    body: bytes
    message_id: str | None
    redelivered: bool
    token: tuple[int, int]  # (lane generation, delivery tag): settles only its own channel
    headers: dict[str, Any] | None = None  # AMQP headers (a signature travels here)


OnDelivery = Callable[["Lane", LaneDelivery], None]


class Loop:
    """One pika I/O loop for every lane; not thread-safe except :meth:`call_threadsafe`."""

    def __init__(self) -> None:
        self.ioloop = IOLoop()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return self.ioloop.call_later(delay, callback)

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        self.ioloop.add_callback_threadsafe(callback)

    def run(self) -> None:
        self.ioloop.start()

    def stop(self) -> None:
        self.ioloop.stop()

    def close(self) -> None:
        self.ioloop.close()


class Lane:
    """Consumes many queues and publishes with confirms over one pair of connections."""

    def __init__(
        self,
        settings: BrokerSettings,
        loop: Loop,
        on_delivery: OnDelivery,
        *,
        declare: bool = False,
        on_fatal: Callable[[BrokerError], None] | None = None,
        on_ready: Callable[[Lane], None] | None = None,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self._on_delivery = on_delivery
        self._declare = declare
        self._on_fatal = on_fatal
        self._on_ready = on_ready
        self._ready_generation = 0
        self._queues: list[str] = []
        self._to_probe: deque[str] = deque()
        self._probing: str | None = None
        self.consuming: set[str] = set()
        self.generation = 0
        self._consume_conn: Any = None
        self._publish_conn: Any = None
        self._consume_ch: Any = None
        self._probe_ch: Any = None
        self._publish_ch: Any = None
        self._confirms: Unconfirmed[Callable[[bool], None] | None] = Unconfirmed()
        self._backoff = 0.5
        self._closing = False
        self._restarting = False

    # -- public (loop thread) ---------------------------------------------------------

    def start(self) -> None:
        self.generation += 1
        self._reset_state()
        self._consume_conn = self._connect(self._settings, self._on_consume_open)
        self._publish_conn = self._connect(
            self._settings.named(f"{self._settings.connection_name} (publish)"),
            self._on_publish_open,
        )

    def add(self, queue: str) -> None:
        self._queues.append(queue)
        self._to_probe.append(queue)
        self._probe_next()

    @property
    def ready(self) -> bool:
        return self._publish_ch is not None and self._consume_ch is not None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_type: str,
        persistent: bool = True,
        on_confirm: Callable[[bool], None] | None = None,
    ) -> bool:
        """Publish; ``on_confirm(acked)`` follows the broker's confirm. False when down."""
        if self._publish_ch is None:
            return False
        properties = message_properties(self._settings, message_type, persistent=persistent)
        self._publish_ch.basic_publish(exchange, routing_key, body, properties)
        self._confirms.add(on_confirm)
        return True

    def answer(
        self, delivery: LaneDelivery, reply: tuple[str, str, bytes], dead_letter: bool
    ) -> None:
        """Publish the reply, then settle the delivery once the broker confirmed it.

        Like the agent daemon: a delivery is acked only after its ack is safe, so a crash
        or a lost connection in between gets it redelivered (and the journal answers).
        """
        exchange, routing_key, body = reply

        def confirmed(acked: bool) -> None:
            if acked:
                self.settle(delivery, dead_letter=dead_letter)
            else:  # the ack was refused: let the command come back and answer it again
                self._loop.call_later(1.0, lambda: self.settle(delivery, requeue=True))

        if not self.publish(exchange, routing_key, body, message_type="ack", on_confirm=confirmed):
            # No publishing channel: if the delivery's channel lives on, hand the command
            # back so it comes again (and the journal answers) instead of sitting unacked.
            log.debug("lane cannot publish: %s will be redelivered", delivery.message_id)
            self._loop.call_later(1.0, lambda: self.settle(delivery, requeue=True))

    def settle(
        self, delivery: LaneDelivery, *, dead_letter: bool = False, requeue: bool = False
    ) -> None:
        generation, tag = delivery.token
        if generation != self.generation or self._consume_ch is None:
            return  # that channel is gone; the broker redelivers the command
        if dead_letter or requeue:
            self._consume_ch.basic_nack(tag, requeue=requeue)
        else:
            self._consume_ch.basic_ack(tag)

    def pause(self) -> None:
        """Stop taking new deliveries; the ones in hand can still be answered."""
        self._to_probe.clear()
        if self._consume_ch is not None:
            for queue in self.consuming:
                self._consume_ch.basic_cancel(queue)
        self.consuming.clear()

    @property
    def unconfirmed(self) -> int:
        return len(self._confirms)

    def close(self) -> None:
        self._closing = True
        self._close_open()

    @property
    def closed(self) -> bool:
        return all(c is None or c.is_closed for c in (self._consume_conn, self._publish_conn))

    # -- connections ------------------------------------------------------------------

    def _connect(self, settings: BrokerSettings, on_open: Callable[[Any], None]) -> Any:
        generation = self.generation

        def opened(connection: Any) -> None:
            if self._closing or self._restarting or generation != self.generation:
                connection.close()  # given up on while it was opening
            else:
                on_open(connection)

        return open_async(
            parameters(settings),
            on_open=opened,
            on_open_error=self._on_connection_lost,
            on_closed=self._on_connection_lost,
            ioloop=self._loop.ioloop,
        )

    def _reset_state(self) -> None:
        self._consume_ch = self._probe_ch = self._publish_ch = None
        self._probing = None
        self.consuming.clear()
        self._to_probe = deque(self._queues)
        self._confirms.reset()

    def _on_consume_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_consume_channel)
        connection.channel(on_open_callback=self._on_probe_channel)

    def _on_consume_channel(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_channel_lost)
        channel.add_on_cancel_callback(self._on_cancelled)
        # Per consumer (global_qos=False): each simulated client holds one command at a
        # time, like an agent.
        channel.basic_qos(prefetch_count=1, callback=lambda _f: self._consume_ready(channel))

    def _consume_ready(self, channel: Any) -> None:
        self._consume_ch = channel
        self._announce()
        self._probe_next()

    def _on_probe_channel(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_probe_closed)
        self._probe_ch = channel
        self._probe_next()

    def _on_publish_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_publish_channel)

    def _on_publish_channel(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_channel_lost)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm,
            callback=lambda _f: self._publish_ready(channel),
        )

    def _publish_ready(self, channel: Any) -> None:
        self._publish_ch = channel
        self._backoff = 0.5
        self._announce()
        self._probe_next()

    def _announce(self) -> None:
        if self.ready and self._ready_generation != self.generation:
            self._ready_generation = self.generation
            if self._on_ready is not None:
                self._on_ready(self)

    def _on_connection_lost(self, connection: Any, reason: BaseException) -> None:
        if self._closing:
            return
        self._restart(translate(reason, f"lane {self._settings.connection_name}"))

    def _on_channel_lost(self, channel: Any, reason: BaseException) -> None:
        if self._closing:
            return
        self._restart(translate(reason, f"lane {self._settings.connection_name} channel"))

    def _restart(self, error: BrokerError) -> None:
        """Drop both connections and reconnect after a jittered, capped backoff."""
        if self._restarting:
            return  # the other connection's close callback: already handled
        self._restarting = True
        self.generation += 1  # answers for the old channel's deliveries are now dropped
        self._reset_state()
        self._close_open()
        if isinstance(error, BrokerRefused) and error.code != 404:
            log.error("%s; giving up on this lane", error)
            self._closing = True
            if self._on_fatal is not None:
                self._on_fatal(error)
            return
        pause = random.uniform(self._backoff / 2, self._backoff)
        log.warning("%s; reconnecting in %.1f s", error, pause)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._loop.call_later(pause, self._reopen)

    def _close_open(self) -> None:
        """Close the connections that are open; one still opening closes once it opens
        (closing it mid-handshake trips an assertion inside pika)."""
        for connection in (self._consume_conn, self._publish_conn):
            if connection is not None and connection.is_open:
                connection.close()

    def _reopen(self) -> None:
        if self._closing:
            return
        if not self.closed:
            self._loop.call_later(0.2, self._reopen)  # the old ones are still closing
            return
        self._restarting = False
        self.start()

    # -- probing and consuming --------------------------------------------------------

    def _probe_next(self) -> None:
        # Consume only once the lane can answer: a command run before the publishing
        # channel is ready would have nowhere to send its ack.
        if self._probing is not None or self._probe_ch is None or not self.ready:
            return
        if not self._to_probe:
            return
        queue = self._probing = self._to_probe.popleft()
        if self._declare:
            arguments = topology.client_queue_arguments(topology.QueueLimits())
            self._probe_ch.queue_declare(
                queue, durable=True, arguments=arguments, callback=lambda _f: self._probed(queue)
            )
        else:
            self._probe_ch.queue_declare(
                queue, passive=True, callback=lambda _f: self._probed(queue)
            )

    def _probed(self, queue: str) -> None:
        self._probing = None
        if self._consume_ch is not None and queue not in self.consuming:
            self._consume_ch.basic_consume(queue, self._on_message, consumer_tag=queue)
            self.consuming.add(queue)
        self._probe_next()

    def _on_probe_closed(self, channel: Any, reason: BaseException) -> None:
        self._probe_ch = None
        queue, self._probing = self._probing, None
        if self._closing or self._consume_conn is None or not self._consume_conn.is_open:
            return
        error = translate(reason, f"declaring {queue}")
        if queue is not None:
            if isinstance(error, BrokerRefused) and error.code == 404:
                self._probe_again(queue, getattr(reason, "reply_text", ""))
            else:
                log.error("cannot consume %s: %s", queue, error)
        connection = self._consume_conn
        self._loop.call_later(
            PROBE_PAUSE,
            lambda: (
                connection.is_open and connection.channel(on_open_callback=self._on_probe_channel)
            ),
        )

    def _probe_again(self, queue: str, reply_text: str) -> None:
        if classify_not_found(reply_text).state is QueueState.NODE_DOWN:
            self._to_probe.append(queue)  # its node is down: the others go first
        else:
            self._to_probe.appendleft(queue)  # not provisioned yet: ask again later

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer: its queue's node went down (or it was
        deleted). Probe it again after a pause; it is consumed once it is back."""
        queue = frame.method.consumer_tag
        self.consuming.discard(queue)
        generation = self.generation

        def again() -> None:
            if generation == self.generation and queue not in self.consuming:
                self._to_probe.append(queue)
                self._probe_next()

        self._loop.call_later(PROBE_PAUSE, again)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        delivery = LaneDelivery(
            queue=method.consumer_tag,
            body=body,
            message_id=properties.message_id,
            redelivered=bool(method.redelivered),
            token=(self.generation, method.delivery_tag),
            headers=properties.headers,
        )
        self._on_delivery(self, delivery)

    def _on_confirm(self, frame: Any) -> None:
        confirm = read_confirm(frame)
        for callback in self._confirms.settle(confirm):
            if callback is not None:
                callback(not confirm.nacked)
