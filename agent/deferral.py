"""Disruptive commands wait, durably, until no distribution runs; then they run once.

On the worker thread: a disruptive command meets the guard. If it is quiet the command is
signalled with the lock held; if not it is spooled (on disk, synced), an interim
``deferred`` ack is returned, and the daemon acks the delivery, so nothing is held open
against the broker's delivery timeout.

A :class:`Releaser` thread looks at the guard while anything is spooled (the lock every
``TICK`` seconds, the other probes every poll interval) and asks the daemon for a release
pass when the guard looks quiet or an entry is due for its final ack anyway. The pass
(worker thread again) answers journalled entries from the journal, expires what is past
its expiry or the maximum deferral, and signals the rest in arrival order, each
COMPONENT_EVENT once: later duplicates are acked ``coalesced``. Each final ack is
journalled before it is handed over, and a spool entry is removed only once its ack is
published, so a crash at any point neither loses a command nor signals one twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent import __version__
from agent.config import AgentConfig
from agent.guard import Busy, Guard, GuardConfigError
from agent.handler import Delivery
from agent.journal import Journal
from agent.spool import Entry, Spool
from schemas.codec import decode, encode
from schemas.messages import Ack, AckStatus, Command, Reason

log = logging.getLogger(__name__)

TICK = 0.1  # how often the lock is looked at while commands wait: release latency
IDLE = 5.0  # how often the watcher wakes when nothing waits (a deferral wakes it at once)

Signal = Callable[[Command, Delivery], bytes]  # signal, journal, return the final ack
OnAck = Callable[[Entry, bytes], bool]  # hand a final ack over; False: stop the pass


class Deferrals:
    def __init__(
        self,
        guard: Guard,
        spool: Spool,
        journal: Journal,
        client_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.guard = guard
        self.spool = spool
        self.journal = journal
        self.client_id = client_id
        self._clock = clock
        self._others: Busy | None = None  # the non-lock probes, looked at every poll
        self._next_poll = 0.0
        self._last_busy = Busy("spool", "deferred commands are waiting")
        self.spooled = threading.Event()  # wakes the releaser

    @classmethod
    def from_config(cls, config: AgentConfig, journal: Journal) -> Deferrals:
        """The agent's deferrals; raises GuardConfigError when they cannot work here."""
        guard = Guard.from_config(config.guard)
        guard.prepare()
        try:
            spool = Spool(config.guard.spool)
        except OSError as exc:
            raise GuardConfigError(f"guard.spool {config.guard.spool}: {exc.strerror}") from None
        if spool.directory is None and guard.probes and guard.disruptive_events:
            log.warning(
                "no spool directory (set [agent] journal or [guard] spool): deferred "
                "commands are kept in memory and lost if the agent stops"
            )
        return cls(guard, spool, journal, config.client_id)

    def guards(self, command: Command) -> bool:
        """Does this command wait for distributions? (A permitted force skips the guard.)"""
        return self.guard.disruptive(command.event_name) and not command.force

    def interim(self, command_id: str) -> bytes | None:
        """The ``deferred`` ack of a spooled command (a redelivery is not spooled twice)."""
        entry = self.spool.get(command_id)
        return None if entry is None else encode(self._ack(entry, AckStatus.DEFERRED))

    # -- worker thread --------------------------------------------------------------------

    def execute(self, command: Command, delivery: Delivery, signal: Signal) -> bytes:
        """Signal now with the lock held if quiet, else spool and return a deferred ack."""
        waiting = len(self.spool)
        if waiting:  # keep arrival order: wait behind the ones already waiting
            last = self._last_busy
            busy = Busy(last.probe, f"{last.detail}; {waiting} deferred command(s) ahead")
        else:
            with self.guard.quiet() as found:
                if found is None:
                    return signal(command, delivery)
            busy = self._last_busy = found
        entry = self.spool.add(command, delivery.received_at, self._clock(), str(busy))
        self.spooled.set()
        log.info("deferred %s %s: %s", command.event_name, command.command_id, busy)
        return encode(self._ack(entry, AckStatus.DEFERRED))

    def release(self, signal: Signal, on_ack: OnAck) -> None:
        """One release pass over the spool (see the module docstring)."""
        ran: dict[str, str] = {}  # COMPONENT_EVENT -> the command whose run stands for it
        waiting = []
        for entry in self.spool.pending():
            ack = self._settled(entry, ran)
            if ack is None:
                waiting.append(entry)
            elif not on_ack(entry, ack):
                return
        if waiting:
            self._run(waiting, ran, signal, on_ack)

    def _settled(self, entry: Entry, ran: dict[str, str]) -> bytes | None:
        """The final ack of an entry that needs no signal: journalled or expired."""
        done = self.journal.get(entry.command_id)
        if done is not None:
            if decode(done, Ack).status in (AckStatus.DONE, AckStatus.FAILED):
                ran.setdefault(entry.command.event_name, entry.command_id)
            return done
        why = self._expiry(entry)
        if why is None:
            return None
        log.warning("deferred %s expired: %s", entry.command_id, why)
        return self._journalled(entry, self._ack(entry, AckStatus.EXPIRED, Reason.EXPIRED, why))

    def _run(
        self, waiting: list[Entry], ran: dict[str, str], signal: Signal, on_ack: OnAck
    ) -> None:
        coalesced = []
        with self.guard.quiet() as busy:
            if busy is not None:
                self._last_busy = busy
                if self.guard.lock is None or busy.probe != self.guard.lock.name:
                    # The watcher looks at the lock itself every tick; cache only the
                    # slow probes, so it does not ask for a pass per tick meanwhile.
                    self._others = busy
                    self._next_poll = time.monotonic() + self.guard.poll_interval
                return
            for entry in waiting:
                name = entry.command.event_name
                if name in ran:
                    coalesced.append((entry, ran[name]))
                    continue
                log.info("releasing %s %s", name, entry.command_id)
                ran[name] = entry.command_id
                if not on_ack(entry, signal(entry.command, self._delivery(entry))):
                    return
        for entry, first in coalesced:
            detail = f"coalesced into {first}, which ran {entry.command.event_name}"
            ack = self._ack(entry, AckStatus.COALESCED, Reason.COALESCED, detail)
            if not on_ack(entry, self._journalled(entry, ack)):
                return

    # -- releaser thread ------------------------------------------------------------------

    def due(self) -> bool:
        """Is a release pass worth running now?"""
        pending = self.spool.pending()
        if not pending:
            return False
        if any(self.journal.get(e.command_id) or self._expiry(e) for e in pending):
            return True
        if self.guard.lock_busy() is not None:
            return False
        now = time.monotonic()
        if now >= self._next_poll:
            self._others, self._next_poll = self.guard.others_busy(), now + self.guard.poll_interval
        return self._others is None

    # -- acks -----------------------------------------------------------------------------

    def _expiry(self, entry: Entry) -> str | None:
        now = self._clock()
        if now >= entry.command.expires_at:
            return f"expired while deferred ({entry.reason})"
        if now >= entry.deferred_at + self.guard.max_deferral:
            return (
                f"deferred longer than max_deferral {self.guard.max_deferral:g} s ({entry.reason})"
            )
        return None

    def _journalled(self, entry: Entry, ack: Ack) -> bytes:
        body = encode(ack)
        self.journal.record(entry.command_id, body)
        return body

    def _delivery(self, entry: Entry) -> Delivery:
        """A delivery whose monotonic receipt time puts the whole deferral in wait_seconds."""
        age = max(0.0, self._clock() - entry.received_at)
        body = encode(entry.command)
        return Delivery(body, entry.command_id, entry.received_at, time.monotonic() - age)

    def _ack(
        self, entry: Entry, status: AckStatus, reason: Reason | None = None, detail: str = ""
    ) -> Ack:
        command = entry.command
        waited = max(0.0, self._clock() - entry.received_at)
        return Ack(
            command_id=command.command_id,
            client_id=self.client_id,
            status=status.value,
            received_at=entry.received_at,
            agent_version=__version__,
            component=command.component,
            event=command.event,
            issued_at=command.issued_at,
            storm_id=command.storm_id,
            wait_seconds=waited,
            total_seconds=waited,
            reason=(reason or Reason.BUSY).value,
            detail=(detail or entry.reason)[:1024],
        )


class Releaser:
    """A thread that only decides *when* to release; the pass itself runs on the worker."""

    def __init__(self, deferrals: Deferrals, request_pass: Callable[[], object]) -> None:
        self._deferrals = deferrals
        self._request_pass = request_pass
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="release", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._deferrals.spooled.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        deferrals = self._deferrals
        while not self._closed.is_set():
            try:
                if deferrals.due():
                    self._request_pass()
            except Exception:  # a probe bug must not end the watching; the spool stays
                log.exception("looking at the guard failed")
            deferrals.spooled.wait(TICK if len(deferrals.spool) else IDLE)
            deferrals.spooled.clear()
