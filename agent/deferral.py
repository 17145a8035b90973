"""Commands that wait, durably: for a distribution to end, or for their start time.

On the worker thread a command comes here in two cases, and either way it is spooled (on
disk, synced) before the daemon acks its delivery, so nothing is held open against the
broker's delivery timeout:

* its start time (``not_before``, a storm's spread) is still to come: it is spooled as
  *scheduled* and nothing is answered yet (the dispatcher counts a command's delivery
  wait from its start time);
* it is disruptive: if the guard is quiet it is signalled with the lock held; if not it
  is spooled as *deferred* and an interim ``deferred`` ack is returned.

A :class:`Releaser` thread looks at the spool (the lock every ``TICK`` seconds while a
command waits for it, the other probes every poll interval, and otherwise as soon as the
next start time or expiry comes) and asks the daemon for a release pass when one is worth
running. The pass (worker thread again) answers entries refused on load, answers
journalled entries from the journal, expires what is past its expiry or the maximum
deferral, runs started commands that need no guard, and signals the guarded ones in
arrival order once the guard is quiet, each COMPONENT_EVENT once: later duplicates are
acked ``coalesced``. A scheduled command that starts while a distribution runs is
announced once with an interim ``deferred`` ack. Each final ack is journalled before it
is handed over, and a spool entry is removed only once its ack is published, so a crash
at any point neither loses a command nor signals one twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import AgentConfig
from agent.delivery import Delivery
from agent.guard import Busy, Guard, GuardConfigError
from agent.journal import Journal
from agent.outbound import make_ack
from agent.signatures import Signatures, kept
from agent.spool import Entry, Hold, Spool
from schemas.codec import DecodeError, decode, encode
from schemas.messages import Ack, AckStatus, Command, Reason

log = logging.getLogger(__name__)

TICK = 0.1  # how often the lock is looked at while commands wait: release latency
IDLE = 5.0  # the longest the watcher sleeps (a new entry wakes it at once)
# What one agent holds at most: a flood of future-dated commands is refused beyond this.
MAX_WAITING = 10_000

Signal = Callable[[Command, Delivery], bytes]  # signal, journal, return the final ack


@dataclass(frozen=True, slots=True)
class Released:
    """An ack for the daemon to publish; once a final one is out, the entry leaves the spool."""

    entry: Entry
    ack: bytes
    final: bool = True


OnAck = Callable[[Released], bool]  # hand an answer over; False: stop the pass


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
        # Scheduled entries whose deferral was announced, with why: their interim ack.
        self._announced: dict[str, str] = {}
        self.spooled = threading.Event()  # wakes the releaser

    @classmethod
    def from_config(cls, config: AgentConfig, journal: Journal) -> Deferrals:
        """The agent's deferrals; raises GuardConfigError or UnsafeFile when they cannot work."""
        guard = Guard.from_config(config.guard)
        guard.prepare()
        signatures = Signatures(config.security)
        check = signatures.problem if signatures.has_keys else None
        try:
            spool = Spool(config.guard.spool, check=check)
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

    def full(self) -> bool:
        return len(self.spool) >= MAX_WAITING

    def interim(self, entry: Entry) -> bytes | None:
        """What a redelivery of a spooled command gets: its deferred ack, or nothing yet."""
        if entry.hold is Hold.SCHEDULED and entry.command_id not in self._announced:
            return None
        detail = self._announced.get(entry.command_id, "")
        return encode(self._ack(entry, AckStatus.DEFERRED, detail=detail))

    # -- worker thread --------------------------------------------------------------------

    def schedule(self, command: Command, delivery: Delivery) -> None:
        """Spool a command whose start time is still to come; it is answered once it ran."""
        self._spool(command, delivery, Hold.SCHEDULED, "")
        delay = (command.not_before or 0.0) - self._clock()
        log.info(
            "scheduled %s %s to start in %.1f s", command.event_name, command.command_id, delay
        )

    def execute(self, command: Command, delivery: Delivery, signal: Signal) -> bytes:
        """Signal now with the lock held if quiet, else spool and return a deferred ack."""
        ahead = self._waiting_for_guard()
        if ahead:  # keep arrival order: wait behind the ones already waiting
            last = self._last_busy
            busy = Busy(last.probe, f"{last.detail}; {ahead} deferred command(s) ahead")
        else:
            with self.guard.quiet() as found:
                if found is None:
                    return signal(command, delivery)
            busy = self._last_busy = found
        entry = self._spool(command, delivery, Hold.DEFERRED, str(busy))
        log.info("deferred %s %s: %s", command.event_name, command.command_id, busy)
        return encode(self._ack(entry, AckStatus.DEFERRED))

    def release(self, signal: Signal, on_ack: OnAck) -> None:
        """One release pass over the spool (see the module docstring)."""
        if not self._answer_quarantined(on_ack):
            return
        self._announced = {k: v for k, v in self._announced.items() if k in self.spool}
        ran: dict[str, str] = {}  # COMPONENT_EVENT -> the command whose run stands for it
        now = self._clock()
        started = []
        for entry in self.spool.pending():
            ack = self._settled(entry, ran, now)
            if ack is not None:
                if not on_ack(Released(entry, ack)):
                    return
            elif _started(entry, now):
                started.append(entry)
        for entry in (e for e in started if not self.guards(e.command)):
            log.info("starting %s %s", entry.command.event_name, entry.command_id)
            if not on_ack(Released(entry, signal(entry.command, self._delivery(entry)))):
                return
        guarded = [e for e in started if self.guards(e.command)]
        if guarded:
            self._run(guarded, ran, signal, on_ack)

    def _spool(self, command: Command, delivery: Delivery, hold: Hold, reason: str) -> Entry:
        entry = self.spool.add(
            command,
            delivery.received_at,
            self._clock(),
            reason,
            body=delivery.body,
            headers=kept(delivery.headers),
            hold=hold,
        )
        self.spooled.set()
        return entry

    def _waiting_for_guard(self) -> int:
        now = self._clock()
        return sum(1 for e in self.spool.pending() if _started(e, now) and self.guards(e.command))

    def _answer_quarantined(self, on_ack: OnAck) -> bool:
        """Answer ``bad-signature`` for what failed its check on load; False: stop the pass."""
        while self.spool.quarantined:
            refused = self.spool.quarantined[0]
            detail = f"refused when the spool was loaded: {refused.problem}"
            ack = self._ack(refused.entry, AckStatus.REJECTED, Reason.BAD_SIGNATURE, detail)
            if not on_ack(Released(refused.entry, encode(ack))):
                return False
            self.spool.quarantined.pop(0)
        return True

    def _settled(self, entry: Entry, ran: dict[str, str], now: float) -> bytes | None:
        """The final ack of an entry that needs no signal: journalled or expired."""
        done = self.journal.get(entry.command_id)
        if done is not None:
            if _ran(done):
                ran.setdefault(entry.command.event_name, entry.command_id)
            return done
        why = self._expiry(entry, now)
        if why is None:
            return None
        log.warning("waiting %s expired: %s", entry.command_id, why)
        return self._journalled(entry, self._ack(entry, AckStatus.EXPIRED, Reason.EXPIRED, why))

    def _run(
        self, waiting: list[Entry], ran: dict[str, str], signal: Signal, on_ack: OnAck
    ) -> None:
        coalesced = []
        with self.guard.quiet() as busy:
            if busy is None:
                for entry in waiting:
                    name = entry.command.event_name
                    if name in ran:
                        coalesced.append((entry, ran[name]))
                        continue
                    log.info("releasing %s %s", name, entry.command_id)
                    ran[name] = entry.command_id
                    if not on_ack(Released(entry, signal(entry.command, self._delivery(entry)))):
                        return
        if busy is not None:
            self._still_busy(busy)
            self._announce(waiting, busy, on_ack)
            return
        for entry, first in coalesced:
            detail = f"coalesced into {first}, which ran {entry.command.event_name}"
            ack = self._ack(entry, AckStatus.COALESCED, Reason.COALESCED, detail)
            if not on_ack(Released(entry, self._journalled(entry, ack))):
                return

    def _still_busy(self, busy: Busy) -> None:
        self._last_busy = busy
        if self.guard.lock is None or busy.probe != self.guard.lock.name:
            # The watcher looks at the lock itself every tick; cache only the slow
            # probes, so it does not ask for a pass per tick meanwhile.
            self._others = busy
            self._next_poll = time.monotonic() + self.guard.poll_interval

    def _announce(self, waiting: list[Entry], busy: Busy, on_ack: OnAck) -> None:
        """Scheduled commands that started while a distribution runs: say they wait."""
        for entry in waiting:
            if entry.hold is not Hold.SCHEDULED or entry.command_id in self._announced:
                continue
            log.info("deferred %s %s: %s", entry.command.event_name, entry.command_id, busy)
            ack = encode(self._ack(entry, AckStatus.DEFERRED, detail=str(busy)))
            if not on_ack(Released(entry, ack, final=False)):
                return
            self._announced[entry.command_id] = str(busy)

    # -- releaser thread ------------------------------------------------------------------

    def due(self) -> bool:
        """Is a release pass worth running now?"""
        if self.spool.quarantined:
            return True
        pending = self.spool.pending()
        now = self._clock()
        if any(self.journal.get(e.command_id) or self._expiry(e, now) for e in pending):
            return True
        started = [e for e in pending if _started(e, now)]
        if not started:
            return False
        if any(not self.guards(e.command) or self._unannounced(e) for e in started):
            return True
        return self._guard_quiet()

    def pause(self) -> float:
        """How long the watcher may sleep before a pass can be due."""
        pending = self.spool.pending()
        if not pending and not self.spool.quarantined:
            return IDLE
        now = self._clock()
        if self.spool.quarantined or any(_started(e, now) for e in pending):
            return TICK
        soonest = min(min(e.command.not_before or now, e.command.expires_at) for e in pending)
        return max(TICK, min(IDLE, soonest - now))

    def _unannounced(self, entry: Entry) -> bool:
        return entry.hold is Hold.SCHEDULED and entry.command_id not in self._announced

    def _guard_quiet(self) -> bool:
        if self.guard.lock_busy() is not None:
            return False
        now = time.monotonic()
        if now >= self._next_poll:
            self._others, self._next_poll = self.guard.others_busy(), now + self.guard.poll_interval
        return self._others is None

    # -- acks -----------------------------------------------------------------------------

    def _expiry(self, entry: Entry, now: float) -> str | None:
        if now >= entry.command.expires_at:
            return f"expired while {self._waiting(entry)}"
        # A scheduled command waits for distributions only from its start time on.
        since = max(entry.deferred_at, entry.command.not_before or 0.0)
        if now >= since + self.guard.max_deferral:
            limit = self.guard.max_deferral
            return f"deferred longer than max_deferral {limit:g} s ({self._why(entry)})"
        return None

    def _waiting(self, entry: Entry) -> str:
        if entry.hold is Hold.SCHEDULED and entry.command_id not in self._announced:
            return "waiting for its start time"
        return f"deferred ({self._why(entry)})"

    def _why(self, entry: Entry) -> str:
        return entry.reason or self._announced.get(entry.command_id, "") or "scheduled"

    def _journalled(self, entry: Entry, ack: Ack) -> bytes:
        body = encode(ack)
        self.journal.record(entry.command_id, body, entry.command.expires_at)
        return body

    def _delivery(self, entry: Entry) -> Delivery:
        """A delivery whose monotonic receipt time puts the whole wait in wait_seconds."""
        age = max(0.0, self._clock() - entry.received_at)
        body = encode(entry.command)
        return Delivery(body, entry.command_id, entry.received_at, time.monotonic() - age)

    def _ack(
        self, entry: Entry, status: AckStatus, reason: Reason | None = None, detail: str = ""
    ) -> Ack:
        command = entry.command
        waited = max(0.0, self._clock() - entry.received_at)
        return make_ack(
            self.client_id,
            command.command_id,
            command,
            status,
            entry.received_at,
            wait_seconds=waited,
            total_seconds=waited,
            reason=reason or Reason.BUSY,
            detail=detail or entry.reason,
        )


def _ran(ack: bytes) -> bool:
    """Does this journalled ack say the command ran? (A damaged entry says nothing.)"""
    try:
        return decode(ack, Ack).status in (AckStatus.DONE, AckStatus.FAILED)
    except DecodeError:
        return False


def _started(entry: Entry, now: float) -> bool:
    return entry.command.not_before is None or entry.command.not_before <= now


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
            pause = IDLE
            try:
                if deferrals.due():
                    self._request_pass()
                pause = deferrals.pause()
            except Exception:  # a probe bug must not end the watching; the spool stays
                log.exception("looking at the guard failed")
            deferrals.spooled.wait(pause)
            deferrals.spooled.clear()
