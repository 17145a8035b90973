"""Hostile bodies: what a peer that holds real credentials may put on the wire.

Hypothesis draws them; :func:`draw` turns a strategy into a fixed list (derandomized, so
a run is reproducible and its figures comparable). Three families:

- :func:`hostile_values`: any msgpack value, with map keys of every packable type (bytes,
  ints, floats, booleans, nil), ext types and timestamps, the extreme integers msgpack
  can carry, NaN and infinities, nesting.
- :func:`shaped`: a valid message of some wire type (an ack, a heartbeat, a publish-report,
  a trigger request, a command, ...) with up to three fields broken: set to a hostile
  value, dropped, joined by a key that is not text, its type tag or version changed.
- :func:`raw_bodies`: bytes that are not msgpack, or only nearly: random bytes, nesting
  deeper than any stack, lengths far beyond the body, trailing garbage, reserved codes,
  text that is not UTF-8.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.codec import encode
from schemas.messages import (
    MESSAGE_TYPES,
    Ack,
    Command,
    Heartbeat,
    Message,
    PublishCount,
    PublishReport,
    TriggerReply,
    TriggerRequest,
    TriggerSummary,
)
from schemas.rules import LATEST_TIME, field_specs

T = Any

EXTREME_INTS = st.sampled_from(
    [2**64 - 1, -(2**63), 2**63, 2**32, 2**31, -(2**31) - 1, 2**53 + 1, -1, 0]
)
ODD_FLOATS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 5e-324, 1e-9, LATEST_TIME + 1.0, 4e10]
)
# Names the schema's patterns accept but no catalog has: label values a peer chooses.
FOREIGN_NAMES = st.from_regex(r"[A-Z][A-Z0-9]{0,31}", fullmatch=True)
EXT_TYPES = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))
TIMESTAMPS = st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    EXTREME_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    ODD_FLOATS,
    st.text(max_size=80),
    FOREIGN_NAMES,
    st.binary(max_size=40),
    EXT_TYPES,
    TIMESTAMPS,
)
# Every map key msgpack can pack: a decoder that assumes text keys meets these.
odd_keys = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)


def hostile_values() -> st.SearchStrategy[T]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(odd_keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


# -- messages of every type, then broken ------------------------------------------------


def valid(kind: str, client_id: str, command_id: str) -> Message:
    """A valid message of wire type ``kind`` that speaks for ``client_id``."""
    now = time.time()
    builders: dict[str, Callable[[], Message]] = {
        "ack": lambda: Ack(
            command_id=command_id,
            client_id=client_id,
            status="done",
            received_at=now,
            agent_version="hostile",
            component="CQMGR32",
            event="STARTCYCLE",
            issued_at=now - 1.0,
            started_at=now,
            finished_at=now,
            run_seconds=0.01,
        ),
        "heartbeat": lambda: Heartbeat(
            client_id=client_id, kind="heartbeat", sent_at=now, platform="nt", agent_version="h"
        ),
        "publish-report": lambda: PublishReport(
            publisher="hostile",
            published_at=now,
            counts=(PublishCount("CQMGR32", "STARTCYCLE", "sent", 1),),
        ),
        "trigger-request": lambda: TriggerRequest(
            event="CQMGR32_STARTCYCLE", clients=(client_id,), delivery_wait=1.0
        ),
        "command": lambda: Command(
            command_id=command_id,
            client_id=client_id,
            component="CQMGR32",
            event="STARTCYCLE",
            silent=False,
            issued_at=now,
            expires_at=now + 30.0,
            requested_by="hostile",
        ),
        "trigger-reply": lambda: TriggerReply(
            status="refused", replied_at=now, reason="bad-request"
        ),
        "trigger-summary": lambda: TriggerSummary(
            storm_id=f"storm-{command_id[:12]}",
            event="CQMGR32_STARTCYCLE",
            state="done",
            targets=1,
            published=1,
            counts={"done": 1},
            finished_at=now,
        ),
    }
    return builders[kind]()


# The wire types a broken message starts from (valid() builds each); any type the schema
# knows, these included, may replace its tag.
KINDS = (
    "ack",
    "heartbeat",
    "publish-report",
    "trigger-request",
    "command",
    "trigger-reply",
    "trigger-summary",
)
TAGS = sorted(MESSAGE_TYPES)
JUNK_TAGS = st.one_of(st.sampled_from(["", "ACK", "commands", "ack\x00"]), hostile_values())
VERSIONS = st.one_of(
    st.sampled_from([[1, 0], [1, 99], [2, 0], [0, 0], [1], [1, 0, 0], [True, 0], [1.0, 0]]),
    st.lists(st.integers(-(2**63), 2**64 - 1), min_size=2, max_size=2),
    hostile_values(),
)


@st.composite
def shaped(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = KINDS,
    client_id: str = "PC001",
    keep: frozenset[str] = frozenset(),
) -> bytes:
    """A valid message of one of ``kinds``, then up to three fields broken.

    ``keep``: fields never touched (a command's ``not_before``: a valid signed command
    that waits is the dispatcher's right, tested as a request's ``spread``).
    """
    kind = draw(st.sampled_from(kinds))
    command_id = draw(st.uuids()).hex
    body: dict[Any, Any] = msgpack.unpackb(encode(valid(kind, client_id, command_id)))
    names = [n for n in [*body, *field_specs(MESSAGE_TYPES[kind])] if n not in keep]
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["set", "set", "drop", "key", "tag", "version"]))
        name = draw(st.sampled_from(names))
        if how == "set":
            body[name] = draw(hostile_values())
        elif how == "drop":
            body.pop(name, None)
        elif how == "key":
            body[draw(odd_keys.filter(lambda k: not isinstance(k, str)))] = draw(hostile_values())
        elif how == "tag":
            body["t"] = draw(st.one_of(st.sampled_from(TAGS), JUNK_TAGS))
        else:
            body["v"] = draw(VERSIONS)
    return pack(body)


# -- bytes that are not (quite) msgpack -------------------------------------------------


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    how = draw(
        st.sampled_from(
            ["random", "nesting", "length bomb", "trailing", "reserved", "utf8", "ints"]
        )
    )
    tail = draw(st.binary(min_size=1, max_size=16))
    if how == "random":
        return draw(st.binary(max_size=512))
    if how == "nesting":
        opener = draw(st.sampled_from([b"\x91", b"\x81\xa1a", b"\xdd\x00\x00\x00\x01"]))
        return opener * draw(st.integers(2, 50_000)) + b"\xc0"
    if how == "length bomb":  # array32, map32, str32, bin32, ext32 claiming ~4 G
        return draw(st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"])) + b"\xff" * 4
    if how == "trailing":
        return pack({"t": "ack", "v": [1, 0]}) + tail
    if how == "reserved":
        return b"\xc1" + tail
    if how == "utf8":
        return b"\x82\xa1t\xa3ack\xa1v\xa2\xff\xfe"
    # uint64 max and int64 min where fields expect small numbers
    return b"\x83\xa1t\xa3ack\xa1v\x92\x01\x00\xa9exit_code" + draw(
        st.sampled_from([b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7])
    )


def big_bodies(count: int) -> list[bytes]:
    """Bodies of 1 MiB, far past the codec's bound (the broker takes them)."""
    return [
        pack({"t": "ack", "v": [1, 0], "detail": "x" * (1 << 20) + str(n)}) for n in range(count)
    ]


# -- drawing ----------------------------------------------------------------------------


def draw(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones on every run."""
    drawn: list[T] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn[:count]


def new_id() -> str:
    return uuid.uuid4().hex
