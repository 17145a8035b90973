"""What the agent does with one delivery, independent of pika.

``admit`` runs on the I/O thread and must be quick: it decodes, validates and answers
what can be answered at once. ``execute`` runs on a worker thread and may block for as
long as the component takes. The simulator (many clients in one process) uses this
same path, so what is load-tested is what runs on clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import __version__
from agent.backends import Backend, SignalResult
from agent.config import AgentConfig
from agent.journal import Journal
from schemas.codec import DecodeError, decode, encode
from schemas.messages import Ack, AckStatus, Command, Reason
from schemas.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SignatureError, Verifier

if TYPE_CHECKING:  # deferral builds Deliveries, so it imports this module at run time
    from agent.deferral import Deferrals, OnAck

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    message_id: str | None
    received_at: float  # wall clock, reported in the ack
    received_mono: float  # monotonic, for the durations
    headers: Mapping[str, object] | None = None  # AMQP headers: the signature travels here


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer now: publish ``ack`` then settle the delivery (dead-letter it or not)."""

    ack: bytes
    dead_letter: bool


@dataclass(frozen=True, slots=True)
class Run:
    """Signal the component on a worker thread, then answer."""

    command: Command


class Handler:
    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        journal: Journal,
        clock: Callable[[], float] = time.time,
        deferrals: Deferrals | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.journal = journal
        self._clock = clock
        # None: nothing waits for distributions (the fleet simulator, tests).
        self.deferrals = deferrals
        security = config.security
        self._verifier = (
            Verifier(security.public_keys) if security and security.public_keys else None
        )
        self._allow_unsigned = security is None or security.allow_unsigned
        self._max_skew = security.max_clock_skew if security else 300.0
        # One command at a time: a redelivery racing its own first run waits here and
        # then finds the journal entry instead of signalling twice.
        self._running = threading.Lock()

    def admit(self, delivery: Delivery) -> Reply | Run:
        refused = self._check_signature(delivery)
        if refused is not None:
            return refused
        try:
            command = decode(delivery.body, Command)
        except DecodeError as exc:
            log.warning("rejecting undecodable command %s: %s", delivery.message_id, exc)
            return self._reject(delivery, None, Reason(exc.reason), exc.detail)
        done = self.journal.get(command.command_id)
        if done is not None:
            log.info("command %s already done: re-sending its ack", command.command_id)
            return Reply(done, dead_letter=False)
        interim = self.deferrals.interim(command.command_id) if self.deferrals else None
        if interim is not None:
            log.info("command %s is already deferred: re-sending that ack", command.command_id)
            return Reply(interim, dead_letter=False)
        problem = self._problem(command)
        if problem is not None:
            reason, detail = problem
            log.warning("rejecting command %s: %s", command.command_id, detail)
            return self._reject(delivery, command, reason, detail)
        return Run(command)

    def execute(self, command: Command, delivery: Delivery) -> bytes:
        """Signal the component (blocking) and return the final ack, journalled."""
        with self._running:
            done = self.journal.get(command.command_id)
            if done is not None:
                return done
            deferrals = self.deferrals
            interim = deferrals.interim(command.command_id) if deferrals else None
            if interim is not None:
                return interim
            wait = self._wait_until_not_before(command)
            if deferrals is not None and deferrals.guards(command):
                return deferrals.execute(command, delivery, self._signal)
            if command.force:
                log.warning("forced %s %s: guard bypassed", command.event_name, command.command_id)
            return self._signal(command, delivery, wait)

    def release(self, on_ack: OnAck) -> None:
        """Worker thread: run what the deferrals can release now (see agent.deferral)."""
        if self.deferrals is None:
            return
        with self._running:
            self.deferrals.release(self._signal, on_ack)

    def _signal(self, command: Command, delivery: Delivery, wait: float = 0.0) -> bytes:
        started_at, started = self._clock(), time.monotonic()
        result = self.backend.signal(command)
        finished = time.monotonic()
        ack = self._final_ack(command, delivery, result, started_at, started, finished, wait)
        body = encode(ack)
        self.journal.record(command.command_id, body)
        return body

    def _check_signature(self, delivery: Delivery) -> Reply | None:
        """Refuse forged, tampered and (unless allowed) unsigned commands, before decoding."""
        signed = bool(delivery.headers and SIGNATURE_HEADER in delivery.headers)
        if not signed and self._allow_unsigned:
            return None
        try:
            if self._verifier is None:
                raise SignatureError("signed, but this agent has no dispatcher public key")
            self._verifier.verify(delivery.body, _signature_headers(delivery.headers))
        except SignatureError as exc:
            log.warning("rejecting command %s: %s", delivery.message_id, exc)
            try:  # named in the ack when it decodes; it is not trusted for anything else
                claimed: Command | None = decode(delivery.body, Command)
            except DecodeError:
                claimed = None
            return self._reject(delivery, claimed, Reason.BAD_SIGNATURE, str(exc))
        return None

    def _problem(self, command: Command) -> tuple[Reason, str] | None:
        if command.issued_at > self._clock() + self._max_skew:
            # Not a replay that the journal or expiry could catch: a clock far apart.
            return Reason.CLOCK_SKEW, (
                f"issued {command.issued_at - self._clock():.0f} s in this agent's future "
                f"(more than the {self._max_skew:.0f} s allowed): check both clocks"
            )
        if command.client_id != self.config.client_id:
            return Reason.WRONG_CLIENT, (
                f"command for {command.client_id} delivered to {self.config.client_id}"
            )
        if self._clock() >= command.expires_at:
            return Reason.EXPIRED, f"expired {self._clock() - command.expires_at:.1f} s ago"
        component = self.config.catalog.component(command.component)
        if component is None or command.event not in component.events:
            known = ", ".join(self.config.catalog.event_names())
            return Reason.UNKNOWN_COMPONENT, f"{command.event_name} is not one of: {known}"
        if not component.runs_on(self.config.platform):
            return Reason.WRONG_PLATFORM, (
                f"{command.component} does not run on {self.config.platform} clients"
            )
        if command.force and not self.config.allow_force:
            return Reason.NOT_PERMITTED, "forced commands are not allowed here (agent.allow_force)"
        return None

    def _wait_until_not_before(self, command: Command) -> float:
        if command.not_before is None:
            return 0.0
        delay = min(command.not_before, command.expires_at) - self._clock()
        if delay > 0:
            time.sleep(delay)
        return max(0.0, delay)

    def _reject(
        self, delivery: Delivery, command: Command | None, reason: Reason, detail: str
    ) -> Reply:
        status = AckStatus.EXPIRED if reason is Reason.EXPIRED else AckStatus.REJECTED
        ack = Ack(
            command_id=command.command_id if command else _safe_id(delivery.message_id),
            client_id=self.config.client_id,
            status=status.value,
            received_at=delivery.received_at,
            agent_version=__version__,
            component=command.component if command else None,
            event=command.event if command else None,
            issued_at=command.issued_at if command else None,
            storm_id=command.storm_id if command else None,
            total_seconds=time.monotonic() - delivery.received_mono,
            reason=reason.value,
            detail=detail[:1024],
        )
        return Reply(encode(ack), dead_letter=True)

    def _final_ack(
        self,
        command: Command,
        delivery: Delivery,
        result: SignalResult,
        started_at: float,
        started: float,
        finished: float,
        waited: float,
    ) -> Ack:
        reason = None
        if not result.ok:
            reason = Reason.SIGNAL_TIMEOUT if result.timed_out else Reason.SIGNAL_FAILED
        return Ack(
            command_id=command.command_id,
            client_id=self.config.client_id,
            status=(AckStatus.DONE if result.ok else AckStatus.FAILED).value,
            received_at=delivery.received_at,
            agent_version=__version__,
            component=command.component,
            event=command.event,
            issued_at=command.issued_at,
            storm_id=command.storm_id,
            started_at=started_at,
            finished_at=self._clock(),
            wait_seconds=max(waited, started - delivery.received_mono),
            run_seconds=finished - started,
            total_seconds=time.monotonic() - delivery.received_mono,
            reason=reason.value if reason else None,
            detail=(result.detail or "")[:1024] or None,
            exit_code=result.exit_code,
            output=result.output,
        )


def _signature_headers(headers: Mapping[str, object] | None) -> dict[str, object]:
    """The signature headers as text, whatever AMQP type the sender gave them.

    An array or a table there is no signature; passed on as it is, an unhashable key id
    raised TypeError in the verifier, which killed the agent, and the redelivered message
    killed every restart too. As text it is refused like any other bad signature.
    """
    found = dict(headers or {})
    for name in (SIGNATURE_HEADER, KEY_ID_HEADER):
        value = found.get(name)
        if value is not None and not isinstance(value, (str, bytes)):
            found[name] = repr(value)
    return found


def _safe_id(message_id: str | None) -> str:
    """Use the AMQP message id for an undecodable command's ack, when it is a valid id."""
    from schemas.messages import ID_PATTERN

    if message_id and ID_PATTERN.fullmatch(message_id):
        return message_id
    return ""
