"""The dispatcher library: turn "run this event on these clients" into confirmed commands.

>>> with Dispatcher() as d:
...     receipts = d.trigger(["PC042"], "CCIM32_STARTCYCLE", silent=True, ttl=600)
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from broker import topology
from broker.broker import Broker
from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.publisher import Outcome, Outgoing, PublishHooks
from broker.settings import BrokerSettings
from dispatcher.access import keys
from dispatcher.api.node_down import waiting_for_node
from dispatcher.storms.publish_reports import make_report
from schemas import DEFAULT_CATALOG, Catalog, Command, ComponentEvent, encode
from schemas.messages import (
    MAX_ISSUED,
    Issued,
    IssueStatus,
    Message,
)
from schemas.signing import Signer
from schemas.syntax import resolve_event

DEFAULT_TTL = 3600.0
# Seconds to keep offering the service its records of issued commands while the broker
# refuses them (a quorum queue electing a new leader takes a few).
RECORD_RETRY_FOR = 30.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one command: ``sent`` (confirmed), ``unroutable``, ``nacked``, or
    ``waiting-node`` (its queue's cluster node is down: the service sends it when it is
    back)."""

    command_id: str
    client_id: str
    component: str
    event: str
    status: str
    issued_at: float
    expires_at: float

    @property
    def sent(self) -> bool:
        return self.status == Outcome.SENT

    @property
    def failed(self) -> bool:
        return self.status not in (Outcome.SENT, IssueStatus.WAITING_NODE)

    @property
    def explanation(self) -> str:
        if self.status == IssueStatus.WAITING_NODE:
            return (
                f"the broker node of {self.client_id}'s queue is down: "
                "the dispatcher service sends it when the node is back"
            )
        if self.status == Outcome.UNROUTABLE:
            return f"no queue for client {self.client_id}: unknown or not provisioned"
        if self.status == Outcome.NACKED:
            return f"the broker refused the command (queue of {self.client_id} full?)"
        return "sent"


class OutcomesUnrecorded(BrokerError):
    """The commands went out, as :attr:`receipts` say, but the service could not be told
    what the broker did with them: their ledger rows stay ``planned`` until their acks
    come, and a ``waiting-node`` one is not sent again when its node is back. Not a
    :class:`ConnectionLost`, which callers retry: sending these again would run them
    twice, under new ids."""

    def __init__(self, receipts: list[Receipt], cause: BrokerError) -> None:
        sent = sum(1 for receipt in receipts if receipt.sent)
        super().__init__(
            f"{sent} of {len(receipts)} command(s) went out, but recording what became of "
            f"them failed: {cause}"
        )
        self.receipts = receipts


def default_requester() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"[:128]


class Dispatcher:
    """Publishes commands to client queues with confirms; not thread-safe."""

    def __init__(
        self,
        url: str | None = None,
        *,
        catalog: Catalog = DEFAULT_CATALOG,
        window: int = 1000,
        hooks: PublishHooks | None = None,
        name: str = "setevnt-dispatcher",
        signer: Signer | None = None,
        settings: BrokerSettings | None = None,
        record: bool = True,
        signing: keys.Signing | None = None,
    ) -> None:
        """``record=False``: the caller keeps the ledger rows of what it sends itself (a
        storm's remediation); otherwise the service's collector is told (:class:`Issued`).
        ``signing`` (the key a command line chose) wins over ``signer``."""
        self._broker = Broker(settings or BrokerSettings.from_env(url), name=name)
        self.settings = self._broker.settings
        self.catalog = catalog
        self._record = record
        stamp = signing.stamp() if signing else keys.command_stamp(signer)
        self._publisher = self._broker.publisher(window=window, hooks=hooks, stamp=stamp)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._broker.close()

    def declare_topology(self) -> None:
        """Declare the shared exchanges and queues (idempotent)."""
        self._broker.declare_topology()

    def provision(
        self, client_ids: Iterable[str], limits: topology.QueueLimits | None = None
    ) -> int:
        """Create the command queues of newly known clients; returns how many were declared."""
        ids = list(client_ids)
        for client_id in ids:
            topology.client_queue(client_id)  # validate all before declaring any
        self._broker.declare_topology()
        self._broker.provision_clients(ids, limits)
        return len(ids)

    def commands(
        self,
        client_ids: Sequence[str],
        events: Sequence[ComponentEvent | str],
        *,
        silent: bool = False,
        ttl: float = DEFAULT_TTL,
        force: bool = False,
        requested_by: str | None = None,
        storm_id: str | None = None,
        not_before: float | None = None,
    ) -> list[Command]:
        """Build (but do not send) one command per client and event, validating all."""
        if not client_ids:
            raise ValueError("no target clients given")
        problem = topology.ttl_problem(ttl)
        if problem:
            raise ValueError(f"ttl {ttl:g} s {problem}")
        resolved = [self._resolve(e) for e in events]
        now = time.time()
        requester = requested_by or default_requester()
        return [
            Command(
                command_id=uuid.uuid4().hex,
                client_id=client_id,
                component=event.component,
                event=event.event,
                silent=silent,
                issued_at=now,
                expires_at=now + ttl,
                requested_by=requester,
                storm_id=storm_id,
                not_before=not_before,
                force=force,
            )
            for client_id in client_ids
            for event in resolved
        ]

    def send(self, commands: Sequence[Command]) -> list[Receipt]:
        """Publish commands; each receipt says whether the broker confirmed it.

        The service's collector hears of them first, so that their acks find ledger rows
        however fast they come, and then of what the broker did with each; when that
        second record fails, :class:`OutcomesUnrecorded` carries the receipts.
        """
        messages = [outgoing(command) for command in commands]
        if self._record:
            self._publish_issued(commands, lambda _command: IssueStatus.PLANNED)
        outcomes = self._publisher.publish(messages)
        statuses = self._statuses(commands, outcomes)
        receipts = [
            Receipt(
                command_id=c.command_id,
                client_id=c.client_id,
                component=c.component,
                event=c.event,
                status=statuses[c.command_id].value,
                issued_at=c.issued_at,
                expires_at=c.expires_at,
            )
            for c in commands
        ]
        if self._record:
            try:
                self._publish_issued(commands, lambda c: statuses[c.command_id])
            except BrokerError as exc:
                raise OutcomesUnrecorded(receipts, exc) from exc
        self._report(commands, outcomes)
        return receipts

    def trigger(
        self, client_ids: Sequence[str], event: ComponentEvent | str, **options: object
    ) -> list[Receipt]:
        """Build and send one command per client for one COMPONENT_EVENT."""
        return self.send(self.commands(client_ids, [event], **options))  # type: ignore[arg-type]

    def _statuses(
        self, commands: Sequence[Command], outcomes: Mapping[str, Outcome]
    ) -> dict[str, IssueStatus]:
        """The broker's outcomes, with ``waiting-node`` for a queue whose node is down."""
        statuses = {c: IssueStatus(outcome.value) for c, outcome in outcomes.items()}
        failed = {
            c.command_id: c.client_id for c in commands if outcomes[c.command_id] != Outcome.SENT
        }
        if failed and self._record:  # only the service can send them again
            down = waiting_for_node(self._broker, failed)
            for command_id in down:
                statuses[command_id] = IssueStatus.WAITING_NODE
        return statuses

    def _resolve(self, event: ComponentEvent | str) -> ComponentEvent:
        if isinstance(event, ComponentEvent):
            if not self.catalog.has_event(event.component, event.event):
                return resolve_event(event.name, self.catalog)
            return event
        return resolve_event(event, self.catalog)

    def _report(self, commands: Sequence[Command], outcomes: Mapping[str, Outcome]) -> None:
        """Tell the collector what the broker did with each publish, so its metrics cover
        every publisher (a waiting-node command counts as the publish it was)."""
        counts = Counter((c.component, c.event, outcomes[c.command_id].value) for c in commands)
        if not counts:
            return
        report = make_report(self.settings.connection_name, counts)
        self._publisher.publish([report_message(report, self.settings)])

    def _publish_issued(
        self, commands: Sequence[Command], status_of: Callable[[Command], IssueStatus]
    ) -> None:
        groups: defaultdict[_Group, dict[str, str]] = defaultdict(dict)
        for c in commands:
            groups[_Group.of(c, status_of(c))][c.command_id] = c.client_id
        messages = [
            report_message(group.issued(self.settings.connection_name, chunk), self.settings)
            for group, ids in groups.items()
            for chunk in _chunks(ids, MAX_ISSUED)
        ]
        self._publish_records(messages)

    def _publish_records(self, messages: list[Outgoing]) -> None:
        """Publish what the service must record, until the broker takes all of it.

        A quorum ack queue that just lost its leader's node refuses publishes, and goes on
        refusing a channel opened before it elected another: each retry opens a new one.
        A record it refused would leave its commands out of the ledger, and a
        waiting-node command would then never be sent again.
        """
        deadline = time.monotonic() + RECORD_RETRY_FOR
        pause = 0.1
        while True:
            outcomes = self._publisher.publish(messages)
            unroutable = sum(outcomes[m.key] == Outcome.UNROUTABLE for m in messages)
            messages = [m for m in messages if outcomes[m.key] == Outcome.NACKED]
            if unroutable:
                raise BrokerRefused(
                    f"recording issued commands: {unroutable} record(s) unroutable: the "
                    f"{topology.ACK_QUEUE} queue is missing (run the dispatcher service)",
                    404,
                )
            if not messages:
                return
            if time.monotonic() + pause > deadline:
                raise ConnectionLost(
                    f"recording issued commands: the broker refused {len(messages)} "
                    f"record(s) for {RECORD_RETRY_FOR:.0f} s (is the {topology.ACK_QUEUE} "
                    "queue full, or without a leader?)"
                )
            self._publisher.close()
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class _Group(NamedTuple):
    """Commands one Issued message can list together."""

    status: IssueStatus
    component: str
    event: str
    issued_at: float
    expires_at: float
    # What a re-send needs, for waiting-node commands only.
    resend: tuple[str, bool, bool, float | None] | None

    @classmethod
    def of(cls, c: Command, status: IssueStatus) -> _Group:
        resend = None
        if status == IssueStatus.WAITING_NODE:
            resend = (c.requested_by, c.silent, c.force, c.not_before)
        return cls(status, c.component, c.event, c.issued_at, c.expires_at, resend)

    def issued(self, publisher: str, commands: dict[str, str]) -> Issued:
        status, component, event, issued_at, expires_at, resend = self
        requested_by, silent, force, not_before = resend or (None, None, None, None)
        return Issued(
            publisher,
            status,
            component,
            event,
            issued_at,
            expires_at,
            commands=commands,
            requested_by=requested_by,
            silent=silent,
            force=force,
            not_before=not_before,
        )


def _chunks(ids: Mapping[str, str], size: int) -> Iterable[dict[str, str]]:
    items = list(ids.items())
    for start in range(0, len(items), size):
        yield dict(items[start : start + size])


def report_message(message: Message, settings: BrokerSettings) -> Outgoing:
    """A message for the collector: the ack exchange, a report key, our broker user (the
    collector counts reports only from dispatchers' users)."""
    return Outgoing(
        key=uuid.uuid4().hex,
        exchange=topology.ACK_EXCHANGE,
        routing_key=topology.report_routing_key(settings.connection_name),
        body=encode(message),
        message_type=message.WIRE_TYPE,
        user_id=settings.username,
    )


def outgoing(command: Command) -> Outgoing:
    """The publication of one command: default exchange, the client's queue, its TTL."""
    ttl = command.expires_at - command.issued_at
    return command_message(command.command_id, command.client_id, encode(command), ttl)


def command_message(
    command_id: str, client_id: str, body: bytes, ttl: float, persistent: bool = True
) -> Outgoing:
    """:func:`outgoing` of a command already encoded (a storm's, by ``codec.encoding``),
    expiring ``ttl`` seconds from now; ``persistent=False`` for the fast lane."""
    return Outgoing(
        key=command_id,
        exchange="",  # the default exchange: no binding look-up per client queue
        routing_key=topology.client_queue(client_id),
        body=body,
        message_type=Command.WIRE_TYPE,
        persistent=persistent,
        expiration_ms=max(1, int(ttl * 1000)),
    )
