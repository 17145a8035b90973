"""Publishing with pipelined confirms.

Waiting for each confirm before the next publish is the naive path, far slower than the
broker allows (docs/performance.md), so this publisher keeps a window of unconfirmed
messages in flight on a pika ``SelectConnection`` driven from the caller's thread, over
one or more confirming channels (the broker routes and confirms each channel's messages
in a process of its own, so a storm of one message per queue goes faster over a few; a
batch whose order matters keeps to one). Every message is published ``mandatory``: the
broker returns what no queue takes before it confirms it, so an unknown client is
reported instead of being a silent success.

Only pika's public API is used: each message is a ``basic_publish`` on its channel, and
the broker's confirms come back through ``confirm_delivery``'s callback. Speed comes from
the window (many messages in flight per round trip), from doing little per message, from
sending each refill's frames in one write (:mod:`broker.cork`) instead of one system call
per frame, and from settling the confirms of one chunk read from the broker together,
with one refill after them, instead of one by one.

A message counts as sent only once the broker confirmed it. When the connection drops,
whatever was not confirmed is published again on a new connection (bounded, jittered
retries); receivers deduplicate by message id.

:meth:`ConfirmingPublisher.stream` publishes from a :class:`Source` instead of a fixed
batch: the source decides what may go out now (a storm paces by rate and by its own
window of commands not yet answered) and is ticked on the publisher's I/O loop, so
everything a storm does runs on one thread, between confirms.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import pika
import pika.exceptions as pe
import tenacity

from broker.confirms import Confirm, Unconfirmed, read_confirm
from broker.connection import open_async, parameters, translate
from broker.cork import Cork, CorkingServices
from broker.errors import BrokerError, ConfirmTimeout, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# A channel's share of the window is refilled once this fraction of it is free (1/16 of
# a storm's 128 per channel: 8 messages).
REFILL_FRACTION = 16
# Seconds to wait for a close handshake when no heartbeat bounds it.
CLOSE_WAIT = 5.0
# Message properties kept for reuse, by what they have in common (a storm has two shapes).
MAX_SHAPES = 16


class Outcome(StrEnum):
    SENT = "sent"
    UNROUTABLE = "unroutable"
    NACKED = "nacked"


class Outgoing(NamedTuple):
    """One message to publish. A named tuple, not a frozen dataclass: a storm builds one
    per command on its publishing thread, and a tuple is built in under half the time."""

    key: str  # unique within a batch; sent as the AMQP message id
    exchange: str
    routing_key: str
    body: bytes
    message_type: str
    persistent: bool = True
    expiration_ms: int | None = None
    user_id: str | None = None


# Where an Outgoing's fields shared by messages of one shape start (see _properties).
_SHAPE = 4


class PublishHooks(Protocol):
    def confirmed(self, outcome: Outcome, seconds: float) -> None: ...

    def reconnected(self) -> None: ...


OnOutcome = Callable[[Outgoing, Outcome], None]
# The outcomes of the confirms settled together (those of one chunk read from the
# broker, each with ``multiple`` possibly many messages) in one call.
OnOutcomes = Callable[[list[tuple[Outgoing, Outcome]]], None]
# Headers to add to a message as it is published (the dispatcher signs commands here).
Stamp = Callable[[Outgoing], Mapping[str, str] | None]


class Source(Protocol):
    """Messages that become ready over time, for :meth:`ConfirmingPublisher.stream`.

    ``take(room)``: at most ``room`` messages that may go now (none: ask again later);
    ``tick()``: every ``tick`` seconds (timers, bookkeeping); ``finished()``: nothing
    more will come and nothing more is awaited. All on the I/O loop, so all quick.
    """

    def take(self, room: int) -> list[Outgoing]: ...

    def tick(self) -> None: ...

    def finished(self) -> bool: ...


@dataclass
class _Run:
    pending: deque[Outgoing]
    outcomes: dict[str, Outcome]
    on_outcome: OnOutcome | None
    source: Source | None = None
    on_outcomes: OnOutcomes | None = None
    returned: set[str] = field(default_factory=set)
    error: BrokerError | None = None
    last_progress: float = field(default_factory=time.monotonic)


@dataclass
class _ChannelShare:
    """One confirming channel and its share of the window: what it published and the
    broker has not confirmed yet, each with its publish time."""

    channel: Any
    window: int
    unconfirmed: Unconfirmed[tuple[Outgoing, float]] = field(default_factory=Unconfirmed)

    @property
    def room(self) -> int:
        return self.window - len(self.unconfirmed)


class ConfirmingPublisher:
    """Publishes batches with a window of confirms in flight; not thread-safe.

    ``channels`` > 1 splits the window over that many channels of the one connection;
    messages then reach the broker in no particular order.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        window: int = 1000,
        channels: int = 1,
        attempts: int = 5,
        confirm_timeout: float = 30.0,
        hooks: PublishHooks | None = None,
        stamp: Stamp | None = None,
    ) -> None:
        if window < 1 or channels < 1:
            raise ValueError("window and channels must be at least 1")
        if window < channels:
            raise ValueError(f"a window of {window} cannot be split over {channels} channels")
        self.channels = channels
        self._stamp = stamp
        self._settings = settings
        self.window = window
        self._refill_at = max(1, window // channels // REFILL_FRACTION)
        self._attempts = attempts
        self._confirm_timeout = confirm_timeout
        self._hooks = hooks
        self._connection: pika.SelectConnection | None = None
        self._cork = Cork()
        # Confirmed while a chunk read from the broker is taken in: (messages, nacked),
        # and whether a channel has room enough for a refill once they are settled.
        self._confirmed: list[tuple[list[tuple[Outgoing, float]], bool]] = []
        self._refill_due = False
        self._lanes: list[_ChannelShare] = []
        self._opening_error: BrokerError | None = None
        self._run: _Run | None = None
        self._ever_opened = False
        self._opening = False
        self._looping = False
        self._tick = 0.02
        self._ticker: Any = None
        self._shapes: dict[tuple[object, ...], pika.BasicProperties] = {}

    # -- public -----------------------------------------------------------------------

    def publish(
        self, messages: Iterable[Outgoing], on_outcome: OnOutcome | None = None
    ) -> dict[str, Outcome]:
        """Publish every message and return its outcome by key.

        Raises :class:`ConnectionLost` when the broker stayed unreachable through every
        retry (the exception's ``unsent`` lists what was never confirmed) and
        :class:`BrokerRefused` when the broker refuses outright.
        """
        return self._publish_run(_Run(pending=deque(messages), outcomes={}, on_outcome=on_outcome))

    def stream(
        self,
        source: Source,
        on_outcome: OnOutcome | None = None,
        *,
        on_outcomes: OnOutcomes | None = None,
        tick: float = 0.02,
    ) -> dict[str, Outcome]:
        """Publish what ``source`` hands out until it says it is finished.

        Same outcomes, retries and errors as :meth:`publish`; after a reconnect the
        unconfirmed messages go out again before the source is asked for more.
        ``on_outcomes`` (instead of ``on_outcome``) takes the outcomes settled together
        (the confirms of one chunk read from the broker) at once.
        """
        if tick <= 0:
            raise ValueError("tick must be positive")
        if on_outcome is not None and on_outcomes is not None:
            raise ValueError("give on_outcome or on_outcomes, not both")
        self._tick = tick
        run = _Run(pending=deque(), outcomes={}, on_outcome=on_outcome, source=source)
        run.on_outcomes = on_outcomes
        return self._publish_run(run)

    def _publish_run(self, run: _Run) -> dict[str, Outcome]:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ConnectionLost),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5.0),
            before_sleep=lambda state: log.warning(
                "publish interrupted (%s); %d unconfirmed, retrying",
                state.outcome.exception() if state.outcome else "?",
                len(run.pending),
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._attempt(run)
        except ConnectionLost as exc:
            exc.unsent = list(run.pending)
            raise
        return run.outcomes

    def close(self) -> None:
        self._discard()

    def __enter__(self) -> ConfirmingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one attempt ------------------------------------------------------------------

    def _attempt(self, run: _Run) -> None:
        self._ensure_open()
        assert self._connection is not None
        run.error = None
        run.last_progress = time.monotonic()
        self._run = run
        timer = self._connection.ioloop.call_later(1.0, self._watchdog)
        if run.source is not None:
            self._ticker = self._connection.ioloop.call_later(self._tick, self._on_tick)
        try:
            self._pump()
            if run.error is None and not self._complete(run):
                self._run_loop(self._connection)
        finally:
            self._settle_confirmed(refill=False)  # a chunk cut short: its confirms count
            self._run = None
            if self._connection is not None:
                self._connection.ioloop.remove_timeout(timer)
                if self._ticker is not None:
                    self._connection.ioloop.remove_timeout(self._ticker)
            self._ticker = None
        if run.error is not None:
            # Unconfirmed messages go back in front, in the order they were published.
            unconfirmed = sorted(
                (sent for lane in self._lanes for sent in lane.unconfirmed.reset()),
                key=lambda sent: sent[1],
            )
            run.returned.clear()
            run.pending.extendleft(reversed([message for message, _ in unconfirmed]))
            if isinstance(run.error, ConfirmTimeout):
                self._discard()  # a link that stopped confirming is not used again
            raise run.error

    def _pump(self) -> None:
        run = self._run
        if run is None or not self._lanes:
            return
        # A confirm pumps only once its channel has a few slots free (_refill_at), so
        # that one ask of the source and one pass over the channels serve several
        # messages; the window stays nearly full all the same. The refill's frames go out
        # in one write.
        with self._cork.held():
            self._pump_run(run)
        if self._complete(run):
            self._stop_loop()

    def _pump_run(self, run: _Run) -> None:
        while run.error is None:
            room = sum(lane.room for lane in self._lanes)
            if room < self._refill_at or (not run.pending and not self._refill(run, room)):
                break
            for lane in self._lanes:
                if not self._fill(run, lane):
                    return

    def _fill(self, run: _Run, lane: _ChannelShare) -> bool:
        """Publish on ``lane`` as much as it has room for; False once publishing failed
        (what was not handed to pika goes back in front)."""
        count = min(lane.room, len(run.pending))
        if count <= 0:
            return True
        channel, awaiting, pending = lane.channel, lane.unconfirmed.add, run.pending
        if not channel.is_open:
            self._fail(ConnectionLost("the publisher's channel is closed"))
            return False
        stamp, shapes = self._stamp, self._shapes
        timestamp, now = int(time.time()), time.monotonic()
        for _ in range(count):
            message = pending.popleft()
            properties = shapes.get(message[_SHAPE:]) or self._shape(message)
            properties.message_id = message.key
            properties.timestamp = timestamp
            properties.headers = stamp(message) if stamp else None
            try:
                channel.basic_publish(
                    message.exchange, message.routing_key, message.body, properties, mandatory=True
                )
            except (pe.AMQPError, OSError) as exc:
                pending.appendleft(message)
                self._fail(translate(exc, "publishing"))
                return False
            except BaseException:
                pending.appendleft(message)
                raise
            awaiting((message, now))
        return True

    def _shape(self, message: Outgoing) -> pika.BasicProperties:
        """The properties of messages shaped like ``message``, for :meth:`_fill` to reuse:
        pika marshals them inside ``basic_publish``, so only the per-message fields are
        set before each publish."""
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()  # e.g. re-sent commands, each with what remains of its ttl
        properties = _properties(message, self._settings.connection_name)
        self._shapes[message[_SHAPE:]] = properties
        return properties

    def _refill(self, run: _Run, room: int) -> bool:
        if run.source is None:
            return False
        run.pending.extend(run.source.take(room))
        return bool(run.pending)

    def _awaiting(self) -> bool:
        return any(lane.unconfirmed for lane in self._lanes)

    def _complete(self, run: _Run) -> bool:
        """Nothing left to publish or confirm, and the source (if any) has nothing more."""
        if run.pending or self._awaiting():
            return False
        return run.source is None or run.source.finished()

    def _on_tick(self) -> None:
        self._ticker = None
        run = self._run
        if run is None or run.source is None or self._connection is None:
            return
        run.source.tick()
        self._pump()
        if self._run is not None and self._connection is not None:
            self._ticker = self._connection.ioloop.call_later(self._tick, self._on_tick)

    # -- callbacks --------------------------------------------------------------------

    def _on_confirm(self, lane: _ChannelShare, confirm: Confirm) -> None:
        run = self._run
        if run is None:
            return
        now = time.monotonic()
        confirmed = lane.unconfirmed.settle(confirm)
        run.last_progress = now
        if self._cork.holding:
            # Inside a chunk read from the broker: settled with the chunk's other
            # confirms, and refilled once, as the chunk ends (_settle_confirmed).
            if confirmed:
                self._confirmed.append((confirmed, confirm.nacked))
                self._refill_due = self._refill_due or lane.room >= self._refill_at
            return
        if confirmed:
            self._settle(run, confirmed, confirm.nacked, now)
        if lane.room >= self._refill_at:
            self._pump()

    def _settle_confirmed(self, *, refill: bool = True) -> None:
        """Settle what the confirms of a chunk confirmed, in the order they came (one
        settling for all of them unless one was a nack), then refill."""
        held, run, refill_due = self._confirmed, self._run, self._refill_due
        if not held or run is None:
            return
        self._confirmed, self._refill_due = [], False
        now = time.monotonic()
        if len(held) == 1:
            self._settle(run, held[0][0], held[0][1], now)
        elif not any(nacked for _, nacked in held):
            together = [sent for confirmed, _ in held for sent in confirmed]
            self._settle(run, together, False, now)
        else:
            for confirmed, nacked in held:
                self._settle(run, confirmed, nacked, now)
        if refill and refill_due:
            self._pump()

    def _settle(
        self, run: _Run, confirmed: list[tuple[Outgoing, float]], nacked: bool, now: float
    ) -> None:
        """Settle what confirms confirmed (``now`` - publish time: its seconds)."""
        outcomes, returned, hooks = run.outcomes, run.returned, self._hooks
        settled = []
        for message, started in confirmed:
            key = message.key
            if nacked:
                outcome = Outcome.NACKED
            elif returned and key in returned:
                returned.discard(key)
                outcome = Outcome.UNROUTABLE
            else:
                outcome = Outcome.SENT
            outcomes[key] = outcome
            if hooks is not None:
                hooks.confirmed(outcome, now - started)
            settled.append((message, outcome))
        if run.on_outcomes is not None:
            run.on_outcomes(settled)
        elif run.on_outcome is not None:
            for message, outcome in settled:
                run.on_outcome(message, outcome)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # The broker sends basic.return before the confirm of the same message.
        if self._run is not None and properties.message_id:
            self._run.returned.add(properties.message_id)

    def _watchdog(self) -> None:
        run = self._run
        if run is None or self._connection is None:
            return
        stalled = time.monotonic() - run.last_progress
        if self._awaiting() and stalled > self._confirm_timeout:
            self._fail(ConfirmTimeout(f"no confirm for {stalled:.0f} s"))
            return
        self._connection.ioloop.call_later(1.0, self._watchdog)

    def _fail(self, error: BrokerError) -> None:
        if self._run is not None and self._run.error is None:
            self._run.error = error
        self._stop_loop()

    def _run_loop(self, connection: pika.SelectConnection) -> None:
        """Run ``connection``'s I/O loop until a callback stops it."""
        self._looping = True
        try:
            connection.ioloop.start()
        finally:
            self._looping = False

    def _stop_loop(self) -> None:
        # Only a running loop: pika keeps a stop asked outside one for its next start,
        # which would then return at once, and a later close would never be sent.
        if self._looping and self._connection is not None:
            self._connection.ioloop.stop()

    # -- connection lifecycle -----------------------------------------------------------

    def _ensure_open(self) -> None:
        if (
            self._connection is not None
            and self._connection.is_open
            and len(self._lanes) == self.channels
            and all(lane.channel.is_open for lane in self._lanes)
        ):
            return
        self._discard()
        self._opening_error = None
        self._opening = True
        try:
            services = CorkingServices()
            self._cork = services.cork
            self._cork.before_release = self._settle_confirmed
            self._connection = open_async(
                parameters(self._settings),  # the next node of a cluster on each reconnect
                on_open=self._on_open,
                on_open_error=self._on_open_error,
                on_closed=self._on_closed,
                ioloop=services,
            )
            self._run_loop(self._connection)  # stops once every channel confirms, or on error
        finally:
            self._opening = False
        if self._opening_error is not None:
            error, self._opening_error = self._opening_error, None
            self._discard()
            raise error
        if self._ever_opened and self._hooks is not None:
            self._hooks.reconnected()
        self._ever_opened = True

    def _discard(self) -> None:
        connection, self._connection, self._lanes = self._connection, None, []
        if connection is None:
            return
        try:
            if not (connection.is_closed or connection.is_closing):
                connection.close()
            if not connection.is_closed:
                # Returns once the close completed (_on_closed). Over a half-open link
                # Close-Ok never comes: pika's heartbeat check then drops the link, and
                # the bound stops waiting even without a heartbeat.
                bound = connection.ioloop.call_later(self._close_wait(), connection.ioloop.stop)
                connection.ioloop.start()
                connection.ioloop.remove_timeout(bound)
        except (pe.AMQPError, OSError) as exc:
            log.debug("closing publisher connection: %s", exc)
        finally:
            connection.ioloop.close()  # its wake-up socket pair, or it leaks

    def _close_wait(self) -> float:
        """How long a close may take: pika notices a silent link within two of its
        heartbeat checks, each ``heartbeat + 5`` s apart."""
        heartbeat = self._settings.heartbeat
        return 2 * (heartbeat + 5) + 1 if heartbeat else CLOSE_WAIT

    def _on_open(self, connection: Any) -> None:
        for _ in range(self.channels):  # _discard() emptied the lanes before connecting
            connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        # The window split as evenly as it goes: every lane's share sums to ``window``.
        share, extra = divmod(self.window, self.channels)
        lane = _ChannelShare(channel, share + (1 if channel.channel_number <= extra else 0))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=lambda frame: self._on_confirm(lane, read_confirm(frame)),
            callback=lambda _frame: self._lane_ready(lane),
        )

    def _lane_ready(self, lane: _ChannelShare) -> None:
        self._lanes.append(lane)
        if len(self._lanes) == self.channels:
            self._stop_loop()

    def _on_open_error(self, connection: Any, exc: BaseException) -> None:
        self._opening_error = translate(exc, f"connecting to {self._settings.redacted()}")
        connection.ioloop.stop()

    def _on_closed(self, connection: Any, reason: BaseException) -> None:
        error = translate(reason, "publisher connection closed")
        if self._run is not None:
            self._fail(error)
        elif self._opening and self._opening_error is None:
            self._opening_error = error
        connection.ioloop.stop()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        error = translate(reason, "publisher channel closed")
        if self._run is not None:
            self._fail(error)
        elif self._opening and self._opening_error is None:
            self._opening_error = error
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        else:
            self._stop_loop()


def _properties(message: Outgoing, app_id: str) -> pika.BasicProperties:
    """Properties from the fields from ``_SHAPE`` on; message id, timestamp and headers
    are set per message."""
    expiration = message.expiration_ms
    return pika.BasicProperties(
        content_type="application/msgpack",
        type=message.message_type,
        app_id=app_id,
        delivery_mode=2 if message.persistent else 1,
        expiration=str(expiration) if expiration is not None else None,
        user_id=message.user_id,
    )
