"""Versioned wire messages.

Every message is a frozen dataclass whose constructor validates it, so an invalid
message can neither be built nor decoded. Each field carries its wire rule (a
:class:`schemas.rules.Spec`, through ``field(metadata=wire(...))``), and the fields in their
declared order are the one definition that validation, the codec (which writes them in that
order) and the JSON Schemas in ``schemas/json/`` (:mod:`schemas.json_schema`) follow.

Versioning: every message carries ``v = [major, minor]``. A decoder accepts any minor of
a major it knows; fields it does not know are an error unless the message's minor is
newer than its own (then they are optional additions from a newer publisher).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from schemas.rules import (
    EVENT_NAME_PATTERN,
    ID_PATTERN,
    NAME_PATTERN,
    OUTPUT_MAX,
    TEXT_MAX,
    FieldError,
    Spec,
    check,
    choice,
    field_specs,
    rules_of,
    wire,
)

SCHEMA_VERSION = (1, 0)


class AckStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DEFERRED = "deferred"
    COALESCED = "coalesced"

    @property
    def final(self) -> bool:
        return self is not AckStatus.DEFERRED


class Reason(StrEnum):
    """Why a command was not done: a bounded set, usable as a metric label."""

    BAD_MSGPACK = "bad-msgpack"
    BAD_MESSAGE = "bad-message"
    UNSUPPORTED_VERSION = "unsupported-version"
    WRONG_CLIENT = "wrong-client"
    EXPIRED = "expired"
    UNKNOWN_COMPONENT = "unknown-component"
    WRONG_PLATFORM = "wrong-platform"
    NOT_PERMITTED = "not-permitted"
    SIGNAL_FAILED = "signal-failed"
    SIGNAL_TIMEOUT = "signal-timeout"
    BUSY = "busy"
    COALESCED = "coalesced"
    BAD_SIGNATURE = "bad-signature"
    CLOCK_SKEW = "clock-skew"


class RefusalReason(StrEnum):
    """Why the dispatcher refused a trigger request: a bounded set, usable as a metric label."""

    NO_USER_ID = "no-user-id"
    NOT_PERMITTED = "not-permitted"
    TOO_LARGE = "too-large"
    UNDECODABLE = "undecodable"
    UNSUPPORTED_VERSION = "unsupported-version"
    BAD_REQUEST = "bad-request"
    BAD_EVENT_NAME = "bad-event-name"
    UNKNOWN_EVENT = "unknown-event"
    NO_TARGETS = "no-targets"
    UNKNOWN_TARGET = "unknown-target"
    BAD_REPLY_TO = "bad-reply-to"
    UNAVAILABLE = "unavailable"
    OVER_LIMIT = "over-limit"  # a value above one of the policy's caps: fix the request
    RATE_LIMITED = "rate-limited"  # beyond the requester's quota for now: retry later


class ReplyStatus(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"


class Kind(StrEnum):
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    GOODBYE = "goodbye"


_ID = wire(Spec("str", pattern=ID_PATTERN))
_OPT_ID = wire(Spec("str", required=False, pattern=ID_PATTERN))
_NAME = wire(Spec("str", pattern=NAME_PATTERN, max_len=32))
_OPT_NAME = wire(Spec("str", required=False, pattern=NAME_PATTERN, max_len=32))
_TIME = wire(Spec("time"))
_OPT_TIME = wire(Spec("time", required=False))
_OPT_SECONDS = wire(Spec("seconds", required=False))
_TEXT = wire(Spec("str", required=False, max_len=TEXT_MAX))
_BOOL = wire(Spec("bool"))
_OPT_BOOL = wire(Spec("bool", required=False))
_COUNT = wire(Spec("int"))
_OPT_COUNT = wire(Spec("int", required=False))
_PUBLISHER = wire(Spec("str", max_len=128))
_VERSION = wire(Spec("str", max_len=32))


def check_expiry(issued_at: float, expires_at: float) -> None:
    if expires_at < issued_at:
        raise FieldError("expires_at", "expires_at: earlier than issued_at")


class Message:
    """Base of the wire messages: a type tag, and fields that carry their wire rules."""

    __slots__ = ()

    WIRE_TYPE: ClassVar[str]

    def __post_init__(self) -> None:
        for name, spec, accept in rules_of(type(self)):
            value = getattr(self, name)
            if not accept(value):
                check(spec, name, value)

    @classmethod
    def check_across(cls, values: Mapping[str, Any]) -> None:
        """Check the rules that span fields, given the fields' valid values by name."""


@dataclass(frozen=True, slots=True)
class Command(Message):
    """Make one component on one client run one event."""

    WIRE_TYPE: ClassVar[str] = "command"

    command_id: str = field(metadata=_ID)
    client_id: str = field(metadata=_ID)
    component: str = field(metadata=_NAME)
    event: str = field(metadata=_NAME)
    silent: bool = field(metadata=_BOOL)
    issued_at: float = field(metadata=_TIME)
    expires_at: float = field(metadata=_TIME)
    requested_by: str = field(metadata=_PUBLISHER)
    storm_id: str | None = field(default=None, metadata=_OPT_ID)
    not_before: float | None = field(default=None, metadata=_OPT_TIME)
    force: bool = field(default=False, metadata=_BOOL)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        check_expiry(self.issued_at, self.expires_at)

    @classmethod
    def check_across(cls, values: Mapping[str, Any]) -> None:
        check_expiry(values["issued_at"], values["expires_at"])

    @property
    def event_name(self) -> str:
        return f"{self.component}_{self.event}"


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """What an agent did with one command, with its own timings.

    Wall-clock timestamps are the agent's clock; the ``*_seconds`` durations were measured
    with its monotonic clock, so they are right even when the two clocks disagree.
    ``issued_at``, ``component`` and ``event`` echo the command so the collector can measure
    trigger latency on the dispatcher's clock and label it without any lookup.
    """

    WIRE_TYPE: ClassVar[str] = "ack"

    # Empty when the command could not be decoded and carried no message id.
    command_id: str = field(
        metadata=wire(Spec("str", pattern=re.compile(r"^(|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")))
    )
    client_id: str = field(metadata=_ID)
    status: str = field(metadata=choice(AckStatus))
    # On the wire the optional fields sit between required ones: they are keyword-only.
    component: str | None = field(default=None, kw_only=True, metadata=_OPT_NAME)
    event: str | None = field(default=None, kw_only=True, metadata=_OPT_NAME)
    issued_at: float | None = field(default=None, kw_only=True, metadata=_OPT_TIME)
    storm_id: str | None = field(default=None, kw_only=True, metadata=_OPT_ID)
    received_at: float = field(metadata=_TIME)
    started_at: float | None = field(default=None, kw_only=True, metadata=_OPT_TIME)
    finished_at: float | None = field(default=None, kw_only=True, metadata=_OPT_TIME)
    wait_seconds: float | None = field(default=None, kw_only=True, metadata=_OPT_SECONDS)
    run_seconds: float | None = field(default=None, kw_only=True, metadata=_OPT_SECONDS)
    total_seconds: float | None = field(default=None, kw_only=True, metadata=_OPT_SECONDS)
    reason: str | None = field(default=None, kw_only=True, metadata=choice(Reason, required=False))
    detail: str | None = field(default=None, kw_only=True, metadata=_TEXT)
    exit_code: int | None = field(default=None, kw_only=True, metadata=_OPT_COUNT)
    output: str | None = field(
        default=None, kw_only=True, metadata=wire(Spec("str", required=False, max_len=OUTPUT_MAX))
    )
    agent_version: str = field(metadata=_VERSION)

    @property
    def final(self) -> bool:
        return AckStatus(self.status).final


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """An agent announcing itself (``hello``), staying alive, or leaving (``goodbye``)."""

    WIRE_TYPE: ClassVar[str] = "heartbeat"

    client_id: str = field(metadata=_ID)
    kind: str = field(metadata=choice(Kind))
    sent_at: float = field(metadata=_TIME)
    platform: str = field(metadata=choice(("nt", "win9x")))
    # On the wire groups comes before agent_version: the defaulted fields are keyword-only.
    groups: tuple[str, ...] = field(default=(), kw_only=True, metadata=wire(Spec("strs")))
    agent_version: str = field(metadata=_VERSION)
    components: dict[str, str] = field(
        default_factory=dict, kw_only=True, metadata=wire(Spec("strmap"))
    )
    copylist_version: str | None = field(
        default=None, kw_only=True, metadata=wire(Spec("str", required=False, max_len=64))
    )


@dataclass(frozen=True, slots=True)
class PublishCount:
    component: str = field(metadata=_NAME)
    event: str = field(metadata=_NAME)
    result: str = field(metadata=choice(("sent", "unroutable", "nacked")))
    count: int = field(metadata=_COUNT)

    def __post_init__(self) -> None:
        for name, spec in field_specs(PublishCount).items():
            check(spec, name, getattr(self, name))
        if self.count < 0:
            raise ValueError("count: must not be negative")


@dataclass(frozen=True, slots=True)
class PublishReport(Message):
    """What a publisher sent in one batch, so the collector's metrics see every publisher."""

    WIRE_TYPE: ClassVar[str] = "publish-report"

    publisher: str = field(metadata=_PUBLISHER)
    published_at: float = field(metadata=_TIME)
    counts: tuple[PublishCount, ...] = field(metadata=wire(Spec("counts", item=PublishCount)))


class IssueStatus(StrEnum):
    PLANNED = "planned"  # about to be published
    SENT = "sent"
    UNROUTABLE = "unroutable"
    NACKED = "nacked"
    # Its client's queue is on a cluster node that is down: the service sends it again.
    WAITING_NODE = "waiting-node"


MAX_ISSUED = 500  # commands per Issued message: well inside the 64 KiB body limit


@dataclass(frozen=True, slots=True)
class Issued(Message):
    """Commands a dispatcher publishes outside storms, as the ledger must know them.

    Sent to the collector before the commands (``planned``), so that their acks find a
    ledger row, and again once the broker answered (``sent``, ``unroutable``, ``nacked``,
    or ``waiting-node`` when the queue's cluster node is down). ``commands`` maps each
    command id to its client. A ``waiting-node`` message also carries what the service
    needs to publish the same commands again when the node is back (``requested_by``,
    ``silent``, ``force``, ``not_before``). The collector records it only from a
    dispatcher's broker user: an ack never creates a row.
    """

    WIRE_TYPE: ClassVar[str] = "issued"

    publisher: str = field(metadata=_PUBLISHER)
    status: str = field(metadata=choice(IssueStatus))
    component: str = field(metadata=_NAME)
    event: str = field(metadata=_NAME)
    issued_at: float = field(metadata=_TIME)
    expires_at: float = field(metadata=_TIME)
    commands: dict[str, str] = field(metadata=wire(Spec("idmap", max_items=MAX_ISSUED)))
    requested_by: str | None = field(
        default=None, kw_only=True, metadata=wire(Spec("str", required=False, max_len=128))
    )
    silent: bool | None = field(default=None, kw_only=True, metadata=_OPT_BOOL)
    force: bool | None = field(default=None, kw_only=True, metadata=_OPT_BOOL)
    not_before: float | None = field(default=None, kw_only=True, metadata=_OPT_TIME)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        check_expiry(self.issued_at, self.expires_at)

    @classmethod
    def check_across(cls, values: Mapping[str, Any]) -> None:
        check_expiry(values["issued_at"], values["expires_at"])


# What a trigger request may ask for, at most (its body is also at most 64 KiB).
MAX_REQUEST_CLIENTS = 1000
DEFAULT_REQUEST_TTL = 3600.0
_EVENT_NAME = wire(Spec("str", pattern=EVENT_NAME_PATTERN, max_len=65))


@dataclass(frozen=True, slots=True)
class TriggerRequest(Message):
    """A service asks the dispatcher to run one COMPONENT_EVENT on some clients.

    Published to the ``setevnt.requests`` exchange; the requester is the AMQP ``user_id``
    (validated by the broker), never a field of the body. Targets combine (their union).
    """

    WIRE_TYPE: ClassVar[str] = "trigger-request"

    event: str = field(metadata=_EVENT_NAME)
    clients: tuple[str, ...] = field(
        default=(), metadata=wire(Spec("strs", max_items=MAX_REQUEST_CLIENTS))
    )
    groups: tuple[str, ...] = field(default=(), metadata=wire(Spec("strs")))
    all: bool = field(default=False, metadata=_BOOL)
    silent: bool = field(default=False, metadata=_BOOL)
    force: bool = field(default=False, metadata=_BOOL)
    ttl: float | None = field(default=None, metadata=_OPT_SECONDS)
    rate: float | None = field(default=None, metadata=_OPT_SECONDS)
    spread: float | None = field(default=None, metadata=_OPT_SECONDS)
    delivery_wait: float | None = field(default=None, metadata=_OPT_SECONDS)
    max_errors: int | None = field(default=None, metadata=_OPT_COUNT)
    idempotency_key: str | None = field(default=None, metadata=_OPT_ID)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not (self.clients or self.groups or self.all):
            raise FieldError("targets", "targets: none given (clients, groups or all)")
        for name in ("ttl", "rate", "delivery_wait"):
            if getattr(self, name) == 0:
                raise FieldError(name, f"{name}: must be positive")
        if self.max_errors is not None and self.max_errors < 0:
            raise FieldError("max_errors", "max_errors: must not be negative")
        if (self.spread or 0.0) >= (self.ttl or DEFAULT_REQUEST_TTL):
            raise FieldError("spread", "spread: must be shorter than ttl, or late clients expire")


@dataclass(frozen=True, slots=True)
class TriggerReply(Message):
    """The dispatcher's immediate answer to a trigger request: accepted or refused."""

    WIRE_TYPE: ClassVar[str] = "trigger-reply"

    status: str = field(metadata=choice(ReplyStatus))
    replied_at: float = field(metadata=_TIME)
    storm_id: str | None = field(default=None, metadata=_OPT_ID)
    targets: int | None = field(default=None, metadata=_OPT_COUNT)
    reason: str | None = field(default=None, metadata=choice(RefusalReason, required=False))
    detail: str | None = field(default=None, metadata=_TEXT)
    idempotency_key: str | None = field(default=None, metadata=_OPT_ID)
    replayed: bool = field(default=False, metadata=_BOOL)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        accepted = self.status == ReplyStatus.ACCEPTED
        if accepted and (self.storm_id is None or self.targets is None or self.reason):
            raise FieldError("status", "status: accepted needs storm_id and targets, no reason")
        if not accepted and self.reason is None:
            raise FieldError("status", "status: refused needs a reason")

    @property
    def accepted(self) -> bool:
        return self.status == ReplyStatus.ACCEPTED


@dataclass(frozen=True, slots=True)
class TriggerSummary(Message):
    """What became of an accepted request, once every target answered or its command expired."""

    WIRE_TYPE: ClassVar[str] = "trigger-summary"

    storm_id: str = field(metadata=_ID)
    event: str = field(metadata=_EVENT_NAME)
    state: str = field(metadata=choice(("done", "halted", "cancelled", "failed")))
    targets: int = field(metadata=_COUNT)
    published: int = field(metadata=_COUNT)
    counts: dict[str, int] = field(metadata=wire(Spec("tally")))
    finished_at: float = field(metadata=_TIME)
    latency_p50: float | None = field(default=None, metadata=_OPT_SECONDS)
    latency_p95: float | None = field(default=None, metadata=_OPT_SECONDS)
    latency_p99: float | None = field(default=None, metadata=_OPT_SECONDS)
    reason: str | None = field(default=None, metadata=_TEXT)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.WIRE_TYPE: cls
    for cls in (
        Command,
        Ack,
        Heartbeat,
        PublishReport,
        Issued,
        TriggerRequest,
        TriggerReply,
        TriggerSummary,
    )
}
