"""The request intake: other services trigger events through ``setevnt.requests``.

Runs inside ``setevnt-dispatcher serve`` on a thread of its own, supervised like the
collector. For each request, on the intake's thread: decide (:class:`dispatcher.service.requests.
Desk`), reply ``accepted`` or ``refused`` to the request's ``reply_to`` at once, then ack
it; a refused one goes to ``setevnt.dead`` with its reason (:mod:`dispatcher.report.dead`);
whatever a delivery holds, the consumer goes on. An accepted request's storm waits for a
worker thread (:class:`dispatcher.service.fair_queue.FairQueue`: round-robin across requesters,
at most ``max_running`` of one requester's at once), which publishes it and is free
again once its last command is confirmed: nothing holds a worker for its clients'
answers. The worker hands the storm back through a queue, and the intake's thread (pika
is not thread-safe) sends the completion summary once the ledger says every target
answered finally or its command expired: a deferred command or an offline client's
still-queued one is waited for there, not on a worker.

A restart loses nothing accepted: a service that stops leaves its request storms
``interrupted`` (unsent commands stay planned), and what it owed is in the database
(:mod:`dispatcher.store.owed`), so the next service, or another one running beside it,
resumes those storms and sends the summaries owed, to requesters still connected. A storm
whose service died shows as running until its lease runs out (or its process is gone);
:mod:`dispatcher.service.takeover` wins the lease and hands the storm here
(:meth:`Intake.adopt`). The intake renews the leases of the storms it holds without
publishing them (waiting their turn, or their summary), so no other service takes those.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError
from broker.session import Incoming, Session
from broker.settings import BrokerSettings
from broker.supervisor import supervise
from broker.watchdog import Watchdog
from dispatcher.access.keys import Signing
from dispatcher.service.dead_letters import dead_letter_refused
from dispatcher.service.fair_queue import FairQueue
from dispatcher.service.policy import Policy
from dispatcher.service.requests import Accepted, Desk, settled, summarize
from dispatcher.store.db import DbSettings, StoreError
from dispatcher.store.idempotency import DEFAULT_WINDOW, IdempotencyKeys
from dispatcher.store.leases import LEASE, Leases, owner_gone, owner_id
from dispatcher.store.ledger import Ledger
from dispatcher.store.ledger_rows import StormState
from dispatcher.store.owed import Owed, Recipient
from dispatcher.store.registry import RegistrySettings, StoreRegistry
from dispatcher.storms import storm as storms
from dispatcher.storms.flow import StormFlow
from dispatcher.storms.progress import STALE_AFTER
from schemas.codec import encode
from schemas.messages import Message, RefusalReason, ReplyStatus, TriggerReply
from schemas.refusals import RequestRefused

log = logging.getLogger(__name__)

PUMP_EVERY = 0.2  # how often the intake's loop looks up from the broker
LOOP = "intake"  # its name to the service's watchdog
SETTLE_EVERY = 1.0  # how often storms that ran are checked for their last answers
HEARTBEAT_EVERY = STALE_AFTER / 4  # held storms' lease renewal, well inside the lease
SUSPENDED = "the dispatcher service stopped; the next one resumes it"
# A summary goes to at most this many askers (a request and its replays): replays spend no
# quota, so without a bound they could grow memory and the owed table without end.
MAX_RECIPIENTS = 16
BAD_REPLY_TO = "reply_to must be direct reply-to or a server-named (amq.gen-) queue"
UNEXPECTED = "the dispatcher failed on it, see its log"


class IntakeHooks(Protocol):
    def request_handled(self, outcome: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    database: DbSettings
    policy: Policy
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    idempotency_window: float = DEFAULT_WINDOW
    workers: int = 4  # request storms publishing at once; more wait their turn
    signing: Signing | None = None  # None: $SETEVNT_SIGNING_KEY_FILE's key, if any


class Intake:
    """Consumes ``setevnt.requests``; one per dispatcher service, stopped with :meth:`stop`."""

    def __init__(
        self,
        broker: BrokerSettings,
        settings: IntakeSettings,
        hooks: IntakeHooks,
        *,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._broker = Broker(broker, name="setevnt-intake")
        self._watchdog = watchdog  # watches the intake's loop: its replies wait for confirms
        self._storms = self._broker.named("setevnt-request-storm")
        self._settings = settings
        self._hooks = hooks
        self._stop = threading.Event()
        self._ran: queue.SimpleQueue[str] = queue.SimpleQueue()  # from the workers
        self._recipients: defaultdict[str, list[Recipient]] = defaultdict(list)
        self._settling: set[str] = set()  # ran, summary owed once every target settled
        self._adopted: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()  # takeover's
        self._leases: Leases | None = None
        self._owed: Owed | None = None
        self._next_settle = 0.0
        self._next_heartbeat = 0.0
        self._desk: Desk | None = None
        self._turns = FairQueue(lambda requester: settings.policy.limits_for(requester).max_running)
        self._workers = [
            threading.Thread(target=self._work, name=f"request-storm-{n}")
            for n in range(settings.workers)
        ]
        self._flows: dict[str, StormFlow] = {}  # running request storms, to stop them
        self.ready = threading.Event()

    def stop(self) -> None:
        """Stop taking requests; request storms still publishing end ``interrupted``.

        Commands already published stay queued for their clients; the next service
        resumes the storms and sends the summaries owed.
        """
        self._stop.set()
        for flow in list(self._flows.values()):
            flow.suspend_requested = SUSPENDED

    def run(self) -> None:
        database = self._settings.database
        try:
            with (
                Ledger(database) as ledger,
                StoreRegistry(database, self._settings.registry) as registry,
                IdempotencyKeys(database, self._settings.idempotency_window) as keys,
                Owed(database) as owed,
                Leases(database) as leases,
            ):
                self._desk = Desk(self._settings.policy, ledger, registry, keys)
                self._owed = owed
                self._leases = leases
                for worker in self._workers:
                    worker.start()
                supervise(self._session, self._stop.is_set, what="intake")
        finally:
            self.stop()
            self._turns.close()  # storms not started stay owed: the next service runs them
            for worker in self._workers:
                if worker.is_alive():
                    worker.join()
            self._broker.close()  # and the storms' connections

    # -- the broker session (intake thread) ---------------------------------------------

    def _session(self) -> None:
        self._beat()  # declaring and opening are watched too
        try:
            self._take_requests()
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm(LOOP)

    def _take_requests(self) -> None:
        self._declare()
        with self._broker.session(prefetch=20) as session:
            session.consume(topology.REQUEST_QUEUE, lambda i: self._on_request(session, i))
            self.ready.set()
            log.info("taking requests from %s", topology.REQUEST_QUEUE)
            try:
                while not self._stop.is_set():
                    self._beat()
                    session.pump(PUMP_EVERY)
                    self._settle(session)
            finally:
                self.ready.clear()

    def _beat(self) -> None:
        if self._watchdog is not None:
            self._watchdog.beat(LOOP)

    def _declare(self) -> None:
        self._broker.declare_topology(doing="declaring the request queue")

    def _on_request(self, session: Session, incoming: Incoming) -> None:
        """Decide, reply, settle: nothing a delivery holds stops the consumer."""
        try:
            refused = self._handle(session, incoming)
        except BrokerError:
            raise  # the session's own trouble: the supervisor reconnects, the broker redelivers
        except Exception:
            log.exception("request from %r: unexpected error; dead-lettered", incoming.user_id)
            self._hooks.request_handled("refused", RefusalReason.UNAVAILABLE.value)
            refused = RequestRefused(RefusalReason.UNAVAILABLE, UNEXPECTED)
        if refused is None:
            session.settle(incoming.delivery_tag)
        else:
            dead_letter_refused(session, incoming, refused)

    def _handle(self, session: Session, incoming: Incoming) -> RequestRefused | None:
        """Reply to the request; why it was refused (to be dead-lettered), if it was."""
        reply_to = incoming.reply_to
        # pika hands over a property that is not UTF-8 as bytes.
        if reply_to is not None and not (
            isinstance(reply_to, str) and topology.reply_address_ok(reply_to)
        ):
            log.warning("request from %r: reply_to %r refused", incoming.user_id, reply_to)
            self._hooks.request_handled("refused", RefusalReason.BAD_REPLY_TO.value)
            return RequestRefused(RefusalReason.BAD_REPLY_TO, BAD_REPLY_TO)
        correlation_id = incoming.correlation_id
        recipient = None
        if reply_to:
            recipient = Recipient(
                reply_to, correlation_id if isinstance(correlation_id, str) else None
            )
        try:
            accepted = self._decide(incoming)
        except RequestRefused as refused:
            log.info("request from %r refused: %s", incoming.user_id, refused)
            reply = TriggerReply(
                status=ReplyStatus.REFUSED,
                replied_at=time.time(),
                reason=refused.reason.value,
                detail=refused.detail[:1024],
            )
            self._reply(session, recipient, reply)
            self._hooks.request_handled("refused", refused.reason.value)
            return refused
        assert incoming.user_id is not None  # the desk accepts only requests that have one
        self._accepted(session, recipient, accepted, incoming.user_id)
        return None

    def _decide(self, incoming: Incoming) -> Accepted:
        assert self._desk is not None
        if incoming.correlation_id is not None and not isinstance(incoming.correlation_id, str):
            raise RequestRefused(RefusalReason.BAD_REQUEST, "correlation_id: not UTF-8 text")
        user_id = incoming.user_id if isinstance(incoming.user_id, str) else None
        try:
            return self._desk.decide(incoming.body, user_id)
        except RequestRefused:
            raise
        except Exception as exc:  # a bug must not take the intake down: log it, answer
            log.exception("request from %r: deciding failed", user_id)
            detail = f"the dispatcher failed to decide on it ({type(exc).__name__}), see its log"
            raise RequestRefused(RefusalReason.UNAVAILABLE, detail) from None

    def _accepted(
        self, session: Session, recipient: Recipient | None, accepted: Accepted, requester: str
    ) -> None:
        reply = TriggerReply(
            status=ReplyStatus.ACCEPTED,
            replied_at=time.time(),
            storm_id=accepted.storm_id,
            targets=accepted.targets,
            idempotency_key=accepted.idempotency_key,
            replayed=accepted.replayed,
        )
        self._reply(session, recipient, reply)
        self._hooks.request_handled("replayed" if accepted.replayed else "accepted", "none")
        if not accepted.replayed:
            self._owe(accepted.storm_id, recipient)
            if recipient is not None:
                self._recipients[accepted.storm_id].append(recipient)
            self._turns.put(requester, accepted.storm_id)
        elif recipient is not None:
            self._replayed(session, accepted.storm_id, recipient)

    def _owe(self, storm_id: str, recipient: Recipient | None) -> None:
        """Kept for the next service; if the database refuses, this one still owes it."""
        assert self._owed is not None
        try:
            self._owed.add(storm_id, recipient, time.time())
        except StoreError as exc:
            log.error("request storm %s: not kept for a restart: %s", storm_id, exc)

    def _replayed(self, session: Session, storm_id: str, recipient: Recipient) -> None:
        """A retry gets the summary too, when the original's is due (now if it was)."""
        if self._held_elsewhere(storm_id):  # its owner sends the summary (or a takeover)
            assert self._owed is not None
            kept = self._owed.storms().get(storm_id, [])
            if recipient in kept or len(kept) >= MAX_RECIPIENTS:
                log.info("storm %s: replay's reply_to not kept for the summary", storm_id)
            else:
                self._owe(storm_id, recipient)
            return
        owed = storm_id in self._recipients
        waiting = self._recipients[storm_id]
        if recipient in waiting or len(waiting) >= MAX_RECIPIENTS:
            log.info("storm %s: replay's reply_to not kept for the summary", storm_id)
            return
        waiting.append(recipient)
        self._owe(storm_id, recipient)
        if owed:
            return
        assert self._desk is not None
        stored = self._desk.ledger.storm(storm_id)
        if stored is not None and stored.state != StormState.RUNNING:
            self._settling.add(storm_id)
            self._next_settle = 0.0  # look now: it has likely settled long ago

    def _held_elsewhere(self, storm_id: str) -> bool:
        """Another live service runs the storm or owes its summary."""
        assert self._desk is not None
        stored = self._desk.ledger.storm(storm_id)
        if stored is None or stored.owner == owner_id() or owner_gone(stored.owner):
            return False
        return time.time() - stored.heartbeat_at <= LEASE

    def _reply(self, session: Session, recipient: Recipient | None, reply: TriggerReply) -> None:
        if recipient is not None:
            self._send(session, recipient, reply)

    def _send(self, session: Session, recipient: Recipient, message: Message) -> None:
        # Not mandatory: a requester that left has no reply queue, and that is its choice.
        session.publish(
            "",
            recipient.reply_to,
            encode(message),
            message_type=message.WIRE_TYPE,
            persistent=False,
            correlation_id=recipient.correlation_id,
        )

    def adopt(self, storm_id: str, why: str) -> None:
        """A request storm whose lease this process won: resume it, or owe its summary
        (from any thread)."""
        self._adopted.put((storm_id, why))

    def _settle(self, session: Session) -> None:
        """Send the summaries of storms whose every target answered or expired."""
        while True:
            try:
                storm_id = self._ran.get_nowait()
            except queue.Empty:
                break
            self._ran_storm(storm_id)
        while True:
            try:
                adopted = self._adopted.get_nowait()
            except queue.Empty:
                break
            self._take_up(*adopted)
        now = time.time()
        self._renew(now)
        if not self._settling or now < self._next_settle:
            return
        self._next_settle = now + SETTLE_EVERY
        assert self._desk is not None and self._owed is not None
        for storm_id in sorted(self._settling):
            counts = self._desk.ledger.counts_at(storm_id, now)
            if settled(counts):
                self._settling.discard(storm_id)
                summary = summarize(self._desk.ledger, storm_id, counts)
                for recipient in self._summary_recipients(storm_id):
                    self._send(session, recipient, summary)
                self._owed.forget(storm_id)

    def _summary_recipients(self, storm_id: str) -> list[Recipient]:
        """Who asked here, and who asked another service (a replay it left in the database
        for this one, which runs the storm)."""
        assert self._owed is not None
        recipients = self._recipients.pop(storm_id, [])
        for recipient in self._owed.storms().get(storm_id, []):
            if recipient not in recipients and len(recipients) < MAX_RECIPIENTS:
                recipients.append(recipient)
        return recipients

    def _renew(self, now: float) -> None:
        """Storms waiting for a worker or for their last answers belong to this service:
        keep them from reading as interrupted (and being taken over by another service)."""
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_EVERY
        assert self._leases is not None
        held = sorted({*self._turns.queued(), *self._settling})
        if not held:
            return
        try:
            lost = self._leases.renew(held, owner_id(), now)
        except StoreError as exc:
            log.error("request storms held: heartbeat not kept: %s", exc)
            return
        for storm_id in lost & self._settling:  # another service owes its summary now
            log.warning("request storm %s: taken over by another service", storm_id)
            self._settling.discard(storm_id)
            self._recipients.pop(storm_id, None)

    def _ran_storm(self, storm_id: str) -> None:
        """A storm's run ended: its summary is due once its targets settled, unless the run
        was interrupted (this service is stopping: the next one resumes it, and owes it)."""
        assert self._desk is not None and self._owed is not None
        record = self._desk.ledger.storm(storm_id)
        if record is not None and record.owner != owner_id():
            self._recipients.pop(storm_id, None)  # taken over: its summary is the new owner's
            return
        if record is not None and record.state == StormState.INTERRUPTED:
            return
        if record is not None and storm_id in self._recipients:
            self._settling.add(storm_id)
            self._next_settle = 0.0
        else:  # nobody waits for its summary, or it was pruned meanwhile
            self._recipients.pop(storm_id, None)
            self._owed.forget(storm_id)

    # -- what another service owed (intake thread) ------------------------------------

    def _take_up(self, storm_id: str, why: str) -> None:
        """A storm whose lease the takeover won for this process: resume its run, or owe
        its summary if the run had ended."""
        assert self._desk is not None and self._owed is not None
        record = self._desk.ledger.storm(storm_id)
        self._recipients[storm_id] = self._owed.storms().get(storm_id, [])
        if record is not None and record.state == StormState.RUNNING:
            log.info("resuming request storm %s (%s)", storm_id, why)
            self._turns.put(record.requested_by, storm_id)
        elif record is not None and self._recipients[storm_id]:
            log.info("request storm %s ended (%s): its summary is owed here", storm_id, why)
            self._settling.add(storm_id)
            self._next_settle = 0.0
        else:  # pruned, or nobody waits for its summary
            self._recipients.pop(storm_id, None)
            self._owed.forget(storm_id)

    # -- storms (worker threads) --------------------------------------------------------

    def _work(self) -> None:
        while (turn := self._turns.take()) is not None:
            try:
                self._run_storm(turn.storm_id)
            except Exception:  # one storm's failure must not cost the intake a worker
                log.exception("request storm %s failed", turn.storm_id)
            finally:
                self._turns.done(turn)

    def _run_storm(self, storm_id: str) -> None:
        database = self._settings.database
        with (
            Ledger(database) as ledger,
            StoreRegistry(database, self._settings.registry) as registry,
        ):
            try:
                record = ledger.storm(storm_id)
                if record is not None and record.owner != owner_id():
                    log.warning("request storm %s: taken over by %s", storm_id, record.owner)
                    return  # its summary is the new owner's too
                if record is not None:  # else pruned meanwhile: nothing to run or summarize
                    storms.run(
                        self._storms,
                        ledger,
                        registry,
                        record,
                        on_flow=self._started,
                        signing=self._settings.signing,
                    )
            except (BrokerError, StoreError) as exc:  # the ledger says it failed
                log.error("request storm %s: %s", storm_id, exc)
            except ValueError as exc:  # its stored options, which today's rules refuse
                log.error("request storm %s: %s", storm_id, exc)
                ledger.finish_storm(storm_id, StormState.FAILED, str(exc)[:1024], time.time())
            finally:
                self._flows.pop(storm_id, None)
            self._ran.put(storm_id)

    def _started(self, flow: StormFlow) -> None:
        flow.await_answers = False  # the intake's thread settles them from the ledger
        if self._stop.is_set():
            flow.suspend_requested = SUSPENDED
        self._flows[flow.order.storm_id] = flow
