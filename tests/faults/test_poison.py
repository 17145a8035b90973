"""Poison input: whatever lands in an agent's queue, it answers with a reason and goes on.

Hypothesis generates the bodies (bad msgpack, wrong types, bad values, missing and extra
fields, huge strings, deep nesting, unknown schema versions, commands the agent must
refuse, bad signatures); all of them are published into a running agent's queue, then
one good command. Every poison message must come back as a ``rejected`` (or ``expired``)
ack with the expected reason and be dead-lettered, nothing of it may run, and the good
command must complete: the agent kept serving.

Content cases are signed with the test dispatcher's key, so what is tested is the
decoding and validation behind the signature check; signature cases carry a valid
command with a missing, forged, garbled or mismatched signature.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broker import topology
from dispatcher import Dispatcher
from schemas.codec import MAX_BODY
from schemas.messages import Command, Reason
from schemas.rules import field_specs
from schemas.signing import KEY_ID_HEADER, SIGNATURE_HEADER, Signer
from tests.faults.harness import AckTap
from tests.faults.tally import run_records, tally
from tests.integration.helpers import channel, queue_depth, signed, start_agent

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLIENT = "PC001"
PER_CATEGORY = 13  # x 13 categories: 169 poison messages

Headers = dict[str, Any] | None
Build = Callable[[str], tuple[bytes, Headers]]  # command id -> (body, AMQP headers)


@dataclass(frozen=True)
class Poison:
    category: str
    expected: frozenset[str]  # acceptable reasons
    build: Build
    status: str = "rejected"
    description: str = ""


# -- bodies -------------------------------------------------------------------------------


DROP = object()  # a change that leaves the field out


def wire(command_id: str, /, **changes: Any) -> dict[str, Any]:
    """A valid command as it looks on the wire, with ``changes`` applied."""
    now = time.time()
    body: dict[str, Any] = {
        "t": "command",
        "v": [1, 0],
        "command_id": command_id,
        "client_id": CLIENT,
        "component": "CQMGR32",
        "event": "STARTCYCLE",
        "silent": False,
        "issued_at": now,
        "expires_at": now + 600,
        "requested_by": "faults@poison",
        "force": False,
    }
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def pack(body: Any) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def pack_map(items: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map from keys and already packed values (for values msgpack won't pack)."""
    count = len(items)
    head = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    return head + b"".join(pack(key) + value for key, value in items)


def content(body: Callable[[str], bytes]) -> Build:
    """Signed with the dispatcher's key: the agent gets past the signature to the body."""

    def build(command_id: str) -> tuple[bytes, Headers]:
        data = body(command_id)
        return data, signed(data)

    return build


def poison(
    category: str, expected: Reason | set[Reason], body: Callable[[str], bytes], **kw: Any
) -> Poison:
    reasons = frozenset({expected} if isinstance(expected, str) else expected)
    return Poison(category, reasons, content(body), **kw)


STR_FIELDS = ("command_id", "client_id", "component", "event", "requested_by", "storm_id")
BOOL_FIELDS = ("silent", "force")
TIME_FIELDS = ("issued_at", "expires_at", "not_before")
REQUIRED = (
    "command_id",
    "client_id",
    "component",
    "event",
    "silent",
    "issued_at",
    "expires_at",
    "requested_by",
    "t",
    "v",
)
OPTIONAL = ("storm_id", "not_before")

small_text = st.text(max_size=20)
packable_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
scalars = st.one_of(
    packable_ints,
    st.floats(allow_nan=True),
    st.booleans(),
    small_text,
    st.binary(max_size=20),
)
anything = st.recursive(
    st.one_of(st.none(), scalars),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)
    ),
    max_leaves=10,
)

# What an AMQP header table can carry (pika encodes no floats there).
header_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        small_text,
        st.binary(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def wrong_for(name: str) -> st.SearchStrategy[Any]:
    """Values of the wrong type (or out of range) for one field."""
    containers = st.one_of(
        st.lists(scalars, max_size=3), st.dictionaries(small_text, scalars, max_size=2)
    )
    required = name not in OPTIONAL
    none = st.just(None) if required else st.nothing()
    if name in STR_FIELDS:
        return st.one_of(
            none, packable_ints, st.floats(), st.booleans(), st.binary(max_size=10), containers
        )
    if name in BOOL_FIELDS:
        return st.one_of(none, packable_ints, st.floats(), small_text, containers)
    return st.one_of(  # time fields
        none,
        st.booleans(),
        small_text,
        containers,
        st.floats(max_value=-1e-9),
        st.integers(-(2**63), -1),
        st.sampled_from([float("nan"), float("inf"), 4e10, 2**40]),
    )


@st.composite
def bad_msgpack(draw: st.DrawFn) -> Poison:
    how = draw(st.sampled_from(["truncated", "trailing", "reserved", "utf8"]))
    cut = draw(st.integers(1, 150))
    tail = draw(st.binary(min_size=1, max_size=16))

    def body(command_id: str) -> bytes:
        data = pack(wire(command_id))
        if how == "truncated":
            return data[: max(1, len(data) - cut)]
        if how == "trailing":
            return data + tail
        if how == "reserved":
            return b"\xc1" + tail
        return b"\x81\xa1t\xa2\xff\xfe"  # a string that is not UTF-8

    return poison("bad msgpack", Reason.BAD_MSGPACK, body, description=how)


@st.composite
def random_bytes(draw: st.DrawFn) -> Poison:
    data = draw(st.binary(max_size=256))
    reasons = {Reason.BAD_MSGPACK, Reason.BAD_MESSAGE}
    return poison("random bytes", reasons, lambda _id: data, description=data[:20].hex())


@st.composite
def not_a_command(draw: st.DrawFn) -> Poison:
    value = draw(
        st.one_of(
            anything.filter(lambda v: not isinstance(v, dict)),
            st.dictionaries(small_text, anything, max_size=5),
            st.sampled_from(["ack", "heartbeat", "publish-report", "", "commands"]).map(
                lambda t: {"t": t, "v": [1, 0]}
            ),
        )
    )
    return poison(
        "not a command", Reason.BAD_MESSAGE, lambda _id: pack(value), description=repr(value)[:60]
    )


@st.composite
def wrong_types(draw: st.DrawFn) -> Poison:
    name = draw(st.sampled_from(STR_FIELDS + BOOL_FIELDS + TIME_FIELDS))
    value = draw(wrong_for(name))
    return poison(
        "wrong types",
        Reason.BAD_MESSAGE,
        lambda cid: pack(wire(cid, **{name: value})),
        description=f"{name}={value!r}"[:80],
    )


@st.composite
def bad_values(draw: st.DrawFn) -> Poison:
    now = time.time()
    name, value = draw(
        st.one_of(
            st.tuples(
                st.sampled_from(["command_id", "client_id", "storm_id"]),
                st.one_of(
                    st.just(""),
                    st.text(min_size=65, max_size=80, alphabet="abc"),
                    st.from_regex(r"[^A-Za-z0-9][A-Za-z0-9]{0,5}", fullmatch=True),
                    st.just("PC001\n"),
                ),
            ),
            st.tuples(
                st.sampled_from(["component", "event"]),
                st.one_of(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), st.just("")),
            ),
            st.tuples(st.just("expires_at"), st.just(now - 3600)),  # before issued_at
        )
    )
    return poison(
        "bad values",
        Reason.BAD_MESSAGE,
        lambda cid: pack(wire(cid, **{name: value})),
        description=f"{name}={value!r}"[:80],
    )


@st.composite
def missing_fields(draw: st.DrawFn) -> Poison:
    dropped = draw(st.sets(st.sampled_from(REQUIRED), min_size=1, max_size=4))
    return poison(
        "missing fields",
        Reason.BAD_MESSAGE,
        lambda cid: pack(wire(cid, **dict.fromkeys(dropped, DROP))),
        description=",".join(sorted(dropped)),
    )


known = set(field_specs(Command)) | {"t", "v"}


@st.composite
def extra_fields(draw: st.DrawFn) -> Poison:
    extra = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=12).filter(lambda k: k not in known),
            anything,
            min_size=1,
            max_size=3,
        )
    )
    return poison(
        "extra fields",
        Reason.BAD_MESSAGE,
        lambda cid: pack({**wire(cid), **extra}),
        description=",".join(extra)[:60],
    )


@st.composite
def huge_strings(draw: st.DrawFn) -> Poison:
    name = draw(st.sampled_from(["requested_by", "command_id", "component", "storm_id"]))
    size = draw(st.one_of(st.integers(130, MAX_BODY - 1000), st.integers(MAX_BODY, 4 * MAX_BODY)))
    char = draw(st.sampled_from("xZ9é\u4e2d"))
    return poison(
        "huge strings",
        Reason.BAD_MESSAGE,
        lambda cid: pack(wire(cid, **{name: char * size})),
        description=f"{name}: {size} x {char!r}",
    )


@st.composite
def deep_nesting(draw: st.DrawFn) -> Poison:
    depth = draw(st.one_of(st.integers(2, 200), st.integers(900, 20_000)))
    name = draw(st.sampled_from(["requested_by", "storm_id", "nested", "v"]))
    opener = draw(st.sampled_from([b"\x91", b"\x81\xa1a"]))  # [[[...]]] or {"a": {"a": ...}}

    def body(cid: str) -> bytes:
        items = [(k, pack(v)) for k, v in wire(cid).items() if k != name]
        return pack_map([*items, (name, opener * depth + b"\xc0")])

    # Too deep for the decoder's stack: bad msgpack; else a wrong type: bad message.
    reasons = {Reason.BAD_MSGPACK, Reason.BAD_MESSAGE}
    return poison("deep nesting", reasons, body, description=f"{name}: depth {depth}")


@st.composite
def versions(draw: st.DrawFn) -> Poison:
    unsupported = st.tuples(st.integers(0, 2**31).filter(lambda n: n != 1), st.integers(0, 99))
    version = draw(st.one_of(unsupported.map(list), st.just(None)))
    if version is None:  # not [major, minor] at all
        version = draw(
            st.one_of(
                small_text,
                st.lists(st.integers(0, 5), min_size=3, max_size=4),
                st.just([1]),
                st.just([1, -1]),
                st.just([True, 0]),
                st.just([1.0, 0]),
            )
        )
        reason = Reason.BAD_MESSAGE
    else:
        reason = Reason.UNSUPPORTED_VERSION
    return poison(
        "schema version",
        reason,
        lambda cid: pack(wire(cid, v=version)),
        description=f"v={version!r}",
    )


@st.composite
def refused_commands(draw: st.DrawFn) -> Poison:
    """Well-formed and signed, but not for this agent to run."""
    now = time.time()
    case = draw(
        st.sampled_from(["wrong client", "unknown event", "expired", "skew", "platform", "force"])
    )
    other = draw(st.from_regex(r"[A-Z][A-Z0-9]{0,10}", fullmatch=True))
    changes: dict[str, Any]
    status = "rejected"
    if case == "wrong client":
        changes, reason = {"client_id": f"PC{other}"}, Reason.WRONG_CLIENT
    elif case == "unknown event":
        field = draw(st.sampled_from(["component", "event"]))
        changes, reason = {field: f"ZZ{other}"[:32]}, Reason.UNKNOWN_COMPONENT
    elif case == "expired":
        ago = draw(st.floats(1, 86400))
        changes = {"issued_at": now - ago - 60, "expires_at": now - ago}
        reason, status = Reason.EXPIRED, "expired"
    elif case == "skew":
        ahead = draw(st.floats(400, 86400 * 30))
        changes = {"issued_at": now + ahead, "expires_at": now + ahead + 600}
        reason = Reason.CLOCK_SKEW
    elif case == "platform":  # CLISVC95 runs on win9x only; the agent is nt
        changes, reason = {"component": "CLISVC95"}, Reason.WRONG_PLATFORM
    else:
        changes, reason = {"force": True}, Reason.NOT_PERMITTED
    return poison(
        "refused commands",
        reason,
        lambda cid: pack(wire(cid, **changes)),
        status=status,
        description=case,
    )


@st.composite
def bad_signatures(draw: st.DrawFn) -> Poison:
    """A valid command body with a signature the agent must not accept."""
    case = draw(
        st.sampled_from(
            ["unsigned", "other key", "tampered", "garbage", "random signature", "unknown key id"]
        )
    )
    garbage = draw(st.text(max_size=100))
    noise = draw(st.binary(min_size=64, max_size=64))

    def build(cid: str) -> tuple[bytes, Headers]:
        body = pack(wire(cid))
        genuine = signed(body)
        if case == "unsigned":
            return body, None
        if case == "other key":
            return body, Signer.generate().headers(body)
        if case == "tampered":
            return pack(wire(cid, silent=True)), genuine
        if case == "garbage":
            return body, {**genuine, SIGNATURE_HEADER: garbage}
        if case == "random signature":
            return body, {**genuine, SIGNATURE_HEADER: base64.b64encode(noise).decode()}
        return body, {**genuine, KEY_ID_HEADER: garbage}

    return Poison("bad signatures", frozenset({Reason.BAD_SIGNATURE}), build, description=case)


@st.composite
def odd_signature_headers(draw: st.DrawFn) -> Poison:
    """Signature headers of any type an AMQP table can carry, beside a valid body."""
    values = draw(st.tuples(header_values, header_values))
    keep = draw(st.sampled_from(["signature", "key id", "neither"]))

    def build(cid: str) -> tuple[bytes, Headers]:
        body = pack(wire(cid))
        genuine = signed(body)
        headers = {SIGNATURE_HEADER: values[0], KEY_ID_HEADER: values[1]}
        if keep == "signature":
            headers[SIGNATURE_HEADER] = genuine[SIGNATURE_HEADER]
        elif keep == "key id":
            headers[KEY_ID_HEADER] = genuine[KEY_ID_HEADER]
        return body, headers

    return Poison(
        "odd signature headers",
        frozenset({Reason.BAD_SIGNATURE}),
        build,
        description=f"genuine {keep}, others {values!r}"[:100],
    )


CATEGORIES = [
    bad_msgpack(),
    random_bytes(),
    not_a_command(),
    wrong_types(),
    bad_values(),
    missing_fields(),
    extra_fields(),
    huge_strings(),
    deep_nesting(),
    versions(),
    refused_commands(),
    bad_signatures(),
    odd_signature_headers(),
]


def generate() -> list[Poison]:
    """Draw the poison with hypothesis, a fixed number per category."""
    drawn: list[Poison] = []
    for strategy in CATEGORIES:

        @settings(
            max_examples=PER_CATEGORY,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def collect(case: Poison) -> None:
            drawn.append(case)

        collect()
    return drawn


# -- the test -----------------------------------------------------------------------------


def publish(url: str, messages: Iterator[tuple[str, bytes, Headers]]) -> int:
    connection, ch = channel(url)
    ch.confirm_delivery()
    count = 0
    try:
        for message_id, body, headers in messages:
            properties = pika.BasicProperties(
                message_id=message_id, headers=headers, delivery_mode=2, type="command"
            )
            ch.basic_publish("", topology.client_queue(CLIENT), body, properties)
            count += 1
    finally:
        connection.close()
    return count


def test_poison_is_rejected_with_a_reason_and_the_agent_keeps_serving(
    amqp_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    cases = generate()
    generated = time.monotonic() - started
    ids = [f"poison-{n:04d}" for n in range(len(cases))]
    by_id = dict(zip(ids, cases, strict=True))
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([CLIENT])
    tap = AckTap(amqp_url)
    agent = start_agent(amqp_url, CLIENT, tmp_path)
    try:
        built = ((cid, *case.build(cid)) for cid, case in by_id.items())
        confirmed = publish(amqp_url, built)
        with Dispatcher(amqp_url) as dispatcher:
            good = dispatcher.trigger([CLIENT], "CCIM32_STARTCYCLE")[0]
        assert good.sent
        finals = tap.wait_finals({*ids, good.command_id}, timeout=60, alive=[agent])
    finally:
        agent.terminate()
        tap.close()
    acks = {a.command_id: a for a in tap.acks() if a.final}
    wrong = []
    for cid, case in by_id.items():
        ack = acks[cid]
        if ack.status != case.status or ack.reason not in case.expected:
            wrong.append(
                f"{cid} {case.category} ({case.description}): got {ack.status}/{ack.reason} "
                f"({ack.detail}), expected {case.status}/{'|'.join(sorted(case.expected))}"
            )
    runs = run_records(tmp_path / f"{CLIENT}.record")
    result = (
        tally(
            f"poison input: {len(cases)} hypothesis bodies, then one good command",
            sent=[*ids, good.command_id],
            confirmed=[*ids[:confirmed], good.command_id],
            acked=finals,
            runs=runs,
            duplicate_acks=tap.finals()[1],
        )
        .with_notes(
            categories=", ".join(f"{c} {n}" for c, n in Counter(c.category for c in cases).items()),
            reasons=", ".join(
                f"{r} {n}" for r, n in sorted(Counter(acks[c].reason for c in ids).items())
            ),
            dead_lettered=queue_depth(amqp_url, topology.DEAD_QUEUE),
            generated_in=f"{generated:.1f} s",
        )
        .show()
    )
    assert not wrong, "\n".join(wrong[:20])
    assert len({c.category for c in cases}) == len(CATEGORIES)
    assert (result.lost, result.duplicate_executions) == (0, 0)
    assert finals[good.command_id] == "done", "the agent kept serving"
    ran = [r["command_id"] for r in runs if r["phase"] == "start"]
    assert ran == [good.command_id], "no poison ran"
    assert queue_depth(amqp_url, topology.DEAD_QUEUE) == len(cases), "all dead-lettered"
    assert queue_depth(amqp_url, topology.client_queue(CLIENT)) == 0
