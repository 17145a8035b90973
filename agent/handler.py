"""What the agent does with one delivery, independent of pika.

``admit`` runs on the I/O thread and must be quick: it decodes, validates and answers
what can be answered at once. ``execute`` runs on a worker thread and may block for as
long as the component takes, but never waits for a start time: a command that starts
later is spooled (agent.deferral) and its delivery acked. The simulator (many clients in
one process) uses this same path, so what is load-tested is what runs on clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.backends import Backend, SignalResult
from agent.backends.base import int32_exit_code
from agent.config import AgentConfig
from agent.delivery import Delivery as Delivery  # where callers found it
from agent.journal import Journal
from agent.outbound import make_ack
from agent.signatures import Signatures
from schemas.codec import DecodeError, decode, encode
from schemas.messages import Ack, AckStatus, Command, Reason
from schemas.rules import ID_PATTERN

if TYPE_CHECKING:  # only a type here: the daemon wires the spool in
    from agent.deferral import Deferrals, OnAck

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settle:
    """Answer now: publish ``ack`` (None: nothing to say yet), then settle the delivery."""

    ack: bytes | None
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
        # None: nothing waits for distributions or start times (the fleet simulator, tests).
        self.deferrals = deferrals
        self._signatures = Signatures(config.security)
        self._max_skew = config.security.max_clock_skew if config.security else 300.0
        # One command at a time: a redelivery racing its own first run waits here and
        # then finds the journal entry instead of signalling twice.
        self._running = threading.Lock()

    def admit(self, delivery: Delivery) -> Settle | Run:
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
            return Settle(done, dead_letter=False)
        entry = self.deferrals.spool.get(command.command_id) if self.deferrals else None
        if entry is not None:
            assert self.deferrals is not None
            log.info("command %s is already spooled: not again", command.command_id)
            return Settle(self.deferrals.interim(entry), dead_letter=False)
        problem = self._problem(command)
        if problem is not None:
            reason, detail = problem
            log.warning("rejecting command %s: %s", command.command_id, detail)
            return self._reject(delivery, command, reason, detail)
        return Run(command)

    def execute(self, command: Command, delivery: Delivery) -> bytes | None:
        """The ack to publish before the delivery is acked: final (journalled), deferred,
        or None when the command was spooled to start later (nothing to say yet). Without
        deferrals (the fleet simulator) a command runs at once: the caller waits for its
        start time.

        Never raises: whatever goes wrong here (a backend raising, an ack that cannot be
        built, a spool that cannot be written) is answered ``failed`` and journalled, so
        the delivery is settled and a redelivery does not run the program again.
        """
        try:
            with self._running:
                return self._execute(command, delivery)
        except Exception as exc:
            log.exception("handling %s failed", command.command_id)
            return self._failed(command, delivery, exc)

    def release(self, on_ack: OnAck) -> None:
        """Worker thread: run what the deferrals can release now (see agent.deferral)."""
        if self.deferrals is None:
            return
        with self._running:
            self.deferrals.release(self._run, on_ack)

    def _execute(self, command: Command, delivery: Delivery) -> bytes | None:
        done = self.journal.get(command.command_id)
        if done is not None:
            return done
        deferrals = self.deferrals
        if deferrals is not None:
            entry = deferrals.spool.get(command.command_id)
            if entry is not None:
                return deferrals.interim(entry)
            if self._later(command):
                deferrals.schedule(command, delivery)
                return None
            if deferrals.guards(command):
                return deferrals.execute(command, delivery, self._run)
        if command.force:
            log.warning("forced %s %s: guard bypassed", command.event_name, command.command_id)
        return self._run(command, delivery)

    def _later(self, command: Command) -> bool:
        return command.not_before is not None and command.not_before > self._clock()

    def _run(self, command: Command, delivery: Delivery) -> bytes:
        """Signal and journal; whatever fails is this command's ``failed`` answer, so a
        release pass hands it over too instead of signalling the command again."""
        try:
            return self._signal(command, delivery)
        except Exception as exc:
            log.exception("answering %s failed", command.command_id)
            return self._failed(command, delivery, exc)

    def _signal(self, command: Command, delivery: Delivery) -> bytes:
        started_at, started = self._clock(), time.monotonic()
        try:
            result = self.backend.signal(command)
        except Exception as exc:  # a backend bug is this command's failure, not the agent's
            log.exception("backend %s raised on %s", self.backend.name, command.command_id)
            result = SignalResult(False, detail=f"{self.backend.name}: {_describe(exc)}")
        finished = time.monotonic()
        ack = self._final_ack(command, delivery, result, started_at, started, finished)
        body = encode(ack)
        self.journal.record(command.command_id, body, command.expires_at)
        return body

    def _failed(self, command: Command, delivery: Delivery, exc: Exception) -> bytes:
        """The ``failed`` answer to a command the agent could not handle, journalled if it can."""
        ack = make_ack(
            self.config.client_id,
            command.command_id,
            command,
            AckStatus.FAILED,
            delivery.received_at,
            total_seconds=time.monotonic() - delivery.received_mono,
            reason=Reason.SIGNAL_FAILED,
            detail=f"the agent failed handling it: {_describe(exc)}",
        )
        body = encode(ack)
        try:
            self.journal.record(command.command_id, body, command.expires_at)
        except OSError as error:
            log.error("cannot journal the failure of %s: %s", command.command_id, error)
        return body

    def _check_signature(self, delivery: Delivery) -> Settle | None:
        """Refuse forged, tampered and (unless allowed) unsigned commands, before decoding."""
        problem = self._signatures.problem(delivery.body, delivery.headers)
        if problem is None:
            return None
        log.warning("rejecting command %s: %s", delivery.message_id, problem)
        try:  # named in the ack when it decodes; it is not trusted for anything else
            claimed: Command | None = decode(delivery.body, Command)
        except DecodeError:
            claimed = None
        return self._reject(delivery, claimed, Reason.BAD_SIGNATURE, problem)

    def _problem(self, command: Command) -> tuple[Reason, str] | None:
        now = self._clock()
        if command.issued_at > now + self._max_skew:
            # Not a replay that the journal or expiry could catch: a clock far apart.
            return Reason.CLOCK_SKEW, (
                f"issued {command.issued_at - now:.0f} s in this agent's future "
                f"(more than the {self._max_skew:.0f} s allowed): check both clocks"
            )
        if command.client_id != self.config.client_id:
            return Reason.WRONG_CLIENT, (
                f"command for {command.client_id} delivered to {self.config.client_id}"
            )
        return self._timing(command, now) or self._target(command) or self._capacity(command)

    def _timing(self, command: Command, now: float) -> tuple[Reason, str] | None:
        if now >= command.expires_at:
            return Reason.EXPIRED, f"expired {now - command.expires_at:.1f} s ago"
        limit = self.config.max_command_lifetime
        lifetime = command.expires_at - command.issued_at
        if lifetime > limit:
            return Reason.NOT_PERMITTED, (
                f"lives {lifetime:.0f} s, longer than this agent's "
                f"[agent] max_command_lifetime of {limit:g} s"
            )
        if command.not_before is None:
            return None
        if command.not_before >= command.expires_at:
            return Reason.EXPIRED, (
                f"starts {command.not_before - command.expires_at:.1f} s after it expires"
            )
        if command.not_before - now > limit:
            return Reason.NOT_PERMITTED, (
                f"starts in {command.not_before - now:.0f} s, later than this agent's "
                f"[agent] max_command_lifetime of {limit:g} s"
            )
        return None

    def _target(self, command: Command) -> tuple[Reason, str] | None:
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

    def _capacity(self, command: Command) -> tuple[Reason, str] | None:
        deferrals = self.deferrals
        if deferrals is None or not deferrals.full():
            return None
        if not (self._later(command) or deferrals.guards(command)):
            return None  # it runs now: nothing more to hold
        return Reason.BUSY, (
            f"{len(deferrals.spool)} commands already wait on this client, the most it holds"
        )

    def _reject(
        self, delivery: Delivery, command: Command | None, reason: Reason, detail: str
    ) -> Settle:
        status = AckStatus.EXPIRED if reason is Reason.EXPIRED else AckStatus.REJECTED
        ack = make_ack(
            self.config.client_id,
            command.command_id if command else _safe_id(delivery.message_id),
            command,
            status,
            delivery.received_at,
            total_seconds=time.monotonic() - delivery.received_mono,
            reason=reason,
            detail=detail,
        )
        return Settle(encode(ack), dead_letter=True)

    def _final_ack(
        self,
        command: Command,
        delivery: Delivery,
        result: SignalResult,
        started_at: float,
        started: float,
        finished: float,
    ) -> Ack:
        reason = None
        if not result.ok:
            reason = Reason.SIGNAL_TIMEOUT if result.timed_out else Reason.SIGNAL_FAILED
        detail = result.detail or ""
        exit_code = int32_exit_code(result.exit_code)
        if exit_code is None and result.exit_code is not None:
            detail = f"{detail} (exit code {result.exit_code!r} does not fit in 32 bits)".strip()
        return make_ack(
            self.config.client_id,
            command.command_id,
            command,
            AckStatus.DONE if result.ok else AckStatus.FAILED,
            delivery.received_at,
            started_at=started_at,
            finished_at=self._clock(),
            wait_seconds=max(0.0, started - delivery.received_mono),
            run_seconds=finished - started,
            total_seconds=time.monotonic() - delivery.received_mono,
            reason=reason,
            detail=detail[:1024] or None,
            exit_code=exit_code,
            output=result.output,
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _safe_id(message_id: str | None) -> str:
    """Use the AMQP message id for an undecodable command's ack, when it is a valid id."""
    if message_id and ID_PATTERN.fullmatch(message_id):
        return message_id
    return ""
