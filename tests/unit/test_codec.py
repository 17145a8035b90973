"""The codec against the shared vectors and JSON Schemas, plus direct round trips.

The vectors in ``schemas/vectors/`` and the schemas in ``schemas/json/`` are the contract
other implementations test against; these tests keep the Python codec, the vectors and the
schemas in agreement.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import jsonschema  # type: ignore[import-untyped]  # test-only; no stubs installed
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    MAX_BODY,
    DecodeError,
    check_fields,
    decode,
    decode_any,
    encode,
    encoding,
)
from schemas.messages import (
    MESSAGE_TYPES,
    Ack,
    Command,
    Heartbeat,
    Message,
    PublishCount,
    PublishReport,
    Reason,
    RefusalReason,
    TriggerReply,
    TriggerRequest,
    TriggerSummary,
)
from schemas.refusals import RequestRefused, read_request
from schemas.rules import ID_PATTERN, NAME_PATTERN, FieldError, field_specs

ROOT = Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "schemas" / "vectors"
SCHEMA_DIR = ROOT / "schemas" / "json"
DECODE_REASONS = {Reason.BAD_MSGPACK, Reason.BAD_MESSAGE, Reason.UNSUPPORTED_VERSION}
YEAR_3000 = 32503680000


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


VECTORS: dict[str, Any] = {t: _load(VECTOR_DIR / f"{t}.json") for t in MESSAGE_TYPES}
SCHEMAS: dict[str, Any] = {t: _load(SCHEMA_DIR / f"{t}.schema.json") for t in MESSAGE_TYPES}


def _cases(kind: str) -> list[Any]:
    return [
        pytest.param(wire_type, vector, id=f"{wire_type}:{vector['name']}")
        for wire_type, content in VECTORS.items()
        for vector in content[kind]
    ]


def _schema_cases() -> list[Any]:
    """Invalid vectors that are msgpack and must therefore fail the JSON Schema too."""
    cases = []
    for param in _cases("invalid"):
        wire_type, vector = param.values
        if vector["reason"] == Reason.BAD_MSGPACK:
            continue
        marks = []
        if vector.get("schema_checkable") is False:
            marks.append(pytest.mark.skip(reason=f"schema_checkable is false: {vector['why']}"))
        cases.append(pytest.param(wire_type, vector, id=param.id, marks=marks))
    return cases


def message_from_fields(cls: type[Message], fields: dict[str, Any]) -> Message:
    """The message a vector's JSON ``fields`` describe."""
    args: dict[str, Any] = {}
    for name, value in fields.items():
        kind = field_specs(cls)[name].kind
        if kind in ("time", "seconds"):
            value = float(value)
        elif kind == "strs":
            value = tuple(value)
        elif kind == "counts":
            value = tuple(PublishCount(**item) for item in value)
        args[name] = value
    return cls(**args)


def _unpack(vector: dict[str, Any]) -> Any:
    return msgpack.unpackb(bytes.fromhex(vector["hex"]), raw=False, strict_map_key=False)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """``pattern`` as JSON Schema means it (ECMA-262): ``$`` matches only at the very end.

    jsonschema uses Python's ``re.search``, whose ``$`` also matches before a final newline.
    """
    ecma = re.sub(r"(?<!\\)\$", r"\\Z", pattern)
    if validator.is_type(instance, "string") and not re.search(ecma, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


@functools.cache
def _validator(wire_type: str) -> Any:
    return EcmaValidator(SCHEMAS[wire_type])


@functools.cache
def _make_vectors() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_vectors", ROOT / "scripts" / "make_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


# --- the vectors ------------------------------------------------------------------------


@pytest.mark.parametrize(("wire_type", "vector"), _cases("valid"))
def test_valid_vector_decodes_to_its_fields(wire_type: str, vector: dict[str, Any]) -> None:
    cls = MESSAGE_TYPES[wire_type]
    expected = message_from_fields(cls, vector["fields"])
    decoded = decode(bytes.fromhex(vector["hex"]), cls)
    assert decoded == expected
    assert encode(decoded) == encode(expected)  # same types too: timestamps become floats
    assert (encode(expected).hex() == vector["hex"]) is vector["canonical"]


@pytest.mark.parametrize(("wire_type", "vector"), _cases("invalid"))
def test_invalid_vector_is_refused_with_its_reason(wire_type: str, vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(bytes.fromhex(vector["hex"]), MESSAGE_TYPES[wire_type])
    assert caught.value.reason is Reason(vector["reason"]), caught.value.detail


@pytest.mark.parametrize(("wire_type", "vector"), _cases("valid"))
def test_valid_vector_fits_the_schema(wire_type: str, vector: dict[str, Any]) -> None:
    errors = [error.message for error in _validator(wire_type).iter_errors(_unpack(vector))]
    assert errors == []


@pytest.mark.parametrize(("wire_type", "vector"), _schema_cases())
def test_invalid_vector_fails_the_schema(wire_type: str, vector: dict[str, Any]) -> None:
    assert not _validator(wire_type).is_valid(_unpack(vector))


@pytest.mark.parametrize("wire_type", MESSAGE_TYPES)
def test_vector_file_is_well_formed(wire_type: str) -> None:
    content = VECTORS[wire_type]
    assert content["message"] == wire_type
    names = [v["name"] for v in content["valid"] + content["invalid"]]
    assert len(names) == len(set(names))
    for vector in content["invalid"]:
        reasons = [vector["reason"], *vector.get("also_acceptable", [])]
        assert {Reason(r) for r in reasons} <= DECODE_REASONS
        assert vector["why"]
    canonical = [v["canonical"] for v in content["valid"]]
    assert True in canonical
    assert False in canonical


def test_vectors_on_disk_are_what_the_script_makes() -> None:
    module = _make_vectors()
    expected: dict[str, str] = module.render(module.build())
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in VECTOR_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(expected)
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is stale: run python scripts/make_vectors.py"


# --- the schemas ------------------------------------------------------------------------

WIRE_TYPE = {
    "str": "string",
    "bool": "boolean",
    "time": "number",
    "seconds": "number",
    "int": "integer",
    "strs": "array",
    "strmap": "object",
    "idmap": "object",
    "counts": "array",
    "tally": "object",
}


@pytest.mark.parametrize("wire_type", MESSAGE_TYPES)
def test_schema_is_draft_2020_12(wire_type: str) -> None:
    schema = SCHEMAS[wire_type]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"https://setevnt.invalid/schemas/{wire_type}.schema.json"
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("cls", MESSAGE_TYPES.values(), ids=list(MESSAGE_TYPES))
def test_schema_mirrors_spec(cls: type[Message]) -> None:
    schema = SCHEMAS[cls.WIRE_TYPE]
    properties = schema["properties"]
    assert list(properties) == ["t", "v", *field_specs(cls)]
    assert properties["t"]["const"] == cls.WIRE_TYPE
    # Required on the wire: required by the spec and not defaulted by the dataclass.
    defaulted = {
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    required = [n for n, spec in field_specs(cls).items() if spec.required and n not in defaulted]
    assert schema["required"] == ["t", "v", *required]
    assert schema["then"]["propertyNames"]["enum"] == list(properties)
    for name, spec in field_specs(cls).items():
        prop = properties[name]
        assert prop["description"], name
        nullable = [] if spec.required else ["null"]
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert types == [WIRE_TYPE[spec.kind], *nullable], name
        if spec.choices:
            assert prop["enum"] == [*spec.choices, *([None] if nullable else [])], name
        elif spec.kind == "str":
            assert prop["maxLength"] == spec.max_len, name
        assert prop.get("pattern") == (spec.pattern.pattern if spec.pattern else None), name
        if spec.kind in ("time", "seconds"):
            assert prop["minimum"] == 0, name
            assert prop.get("maximum") == (YEAR_3000 if spec.kind == "time" else None), name
        if spec.kind == "int":  # a count the message requires >= 0 says so
            assert prop["minimum"] in (-(2**31), 0), name
            assert prop["maximum"] == 2**31 - 1, name


def test_schema_collections_mirror_messages() -> None:
    groups = SCHEMAS["heartbeat"]["properties"]["groups"]
    assert (groups["maxItems"], groups["items"]["pattern"]) == (32, ID_PATTERN.pattern)
    components = SCHEMAS["heartbeat"]["properties"]["components"]
    assert components["maxProperties"] == 64
    assert components["propertyNames"] == {"maxLength": 32, "pattern": NAME_PATTERN.pattern}
    assert components["additionalProperties"] == {"type": "string", "maxLength": 64}
    report = SCHEMAS["publish-report"]
    assert report["properties"]["counts"]["maxItems"] == 256
    count = report["$defs"]["count"]
    assert count["additionalProperties"] is False
    assert [f.name for f in dataclasses.fields(PublishCount)] == count["required"]
    assert count["properties"]["component"]["pattern"] == NAME_PATTERN.pattern
    assert count["properties"]["result"]["enum"] == ["sent", "unroutable", "nacked"]
    assert count["properties"]["count"]["minimum"] == 0


# --- direct tests -----------------------------------------------------------------------

COMMAND = Command(
    command_id="5f0e3a9c2b7d4e1fa6c8b0d9e2f41357",
    client_id="PC042",
    component="CLISVCL",
    event="CLOSE",
    silent=True,
    issued_at=1700000000.123456,
    expires_at=1700000600.123456,
    requested_by="jdoe@console01",
    storm_id="storm-1",
    not_before=1700000010.0,
    force=True,
)
ACK = Ack(
    command_id=COMMAND.command_id,
    client_id="PC042",
    status="done",
    received_at=1700000000.5,
    agent_version="1.2.3",
    component="CLISVCL",
    event="CLOSE",
    issued_at=COMMAND.issued_at,
    started_at=1700000010.0,
    finished_at=1700000011.0,
    wait_seconds=9.5,
    run_seconds=1.0,
    total_seconds=10.5,
    exit_code=0,
    output="ok",
)
HEARTBEAT = Heartbeat(
    client_id="PC042",
    kind="goodbye",
    sent_at=1700000000.0,
    platform="win9x",
    agent_version="1.2.3",
    groups=("lab-7",),
    components={"CLISVC95": "2.0"},
    copylist_version="7",
)
REPORT = PublishReport(
    publisher="setevnt-dispatcher",
    published_at=1700000000.0,
    counts=(PublishCount("CLISVCL", "CLOSE", "sent", 3),),
)


REQUEST = TriggerRequest(
    event="CLISVCL_CLOSE", groups=("lab-7",), silent=True, ttl=60.0, idempotency_key="k-1"
)
REPLY = TriggerReply(status="refused", replied_at=1700000000.0, reason="no-targets")
SUMMARY = TriggerSummary(
    storm_id="storm-1",
    event="CLISVCL_CLOSE",
    state="halted",
    targets=3,
    published=2,
    counts={"done": 1, "failed": 1, "cancelled": 1},
    finished_at=1700000001.0,
    latency_p50=0.5,
    reason="1 errors exceed --max-errors 0",
)
MESSAGES = [COMMAND, ACK, HEARTBEAT, REPORT, REQUEST, REPLY, SUMMARY]


@pytest.mark.parametrize("message", MESSAGES, ids=[m.WIRE_TYPE for m in MESSAGES])
def test_round_trip(message: Message) -> None:
    data = encode(message)
    assert decode(data, type(message)) == message
    assert decode_any(data) == message
    assert encode(decode_any(data)) == data


def test_an_ack_is_not_a_command() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(encode(ACK), Command)
    assert caught.value.reason is Reason.BAD_MESSAGE
    assert str(caught.value).startswith("bad-message: ")


def test_ack_without_command_id_is_valid() -> None:
    ack = Ack(
        command_id="",
        client_id="PC042",
        status="rejected",
        received_at=1700000000.0,
        agent_version="1.2.3",
        reason="bad-msgpack",
    )
    assert decode(encode(ack), Ack) == ack
    assert ack.final


def test_deferred_ack_is_not_final() -> None:
    assert not dataclasses.replace(ACK, status="deferred").final


@pytest.mark.parametrize(
    "changes",
    [
        {"component": "clisvcl"},
        {"event": "START CYCLE"},
        {"client_id": "PC 042"},
        {"client_id": "PC042\n"},
        {"command_id": ""},
        {"storm_id": "x" * 65},
        {"silent": 1},
        {"force": None},
        {"issued_at": -1.0},
        {"not_before": math.nan},
        {"issued_at": 1700000000000.0, "expires_at": 1700000600000.0},
        {"expires_at": 1699999999.0},
        {"requested_by": "x" * 129},
        {"requested_by": None},
    ],
    ids=repr,
)
def test_command_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\w+: "):
        dataclasses.replace(COMMAND, **changes)


def test_publish_count_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        PublishCount("CCIM32", "STARTCYCLE", "sent", -1)


def test_body_of_exactly_max_size_is_accepted() -> None:
    # A newer minor may carry fields this side does not know: pad with one.
    body = {**msgpack.unpackb(encode(COMMAND)), "v": [1, 7]}
    base = len(msgpack.packb({**body, "padding": ""}))
    data = msgpack.packb({**body, "padding": "x" * (MAX_BODY - base - 2)})  # str16 header
    assert len(data) == MAX_BODY
    assert decode(data, Command) == COMMAND
    with pytest.raises(DecodeError) as caught:
        decode(data + b"\xc0", Command)
    assert caught.value.reason is Reason.BAD_MESSAGE


def test_non_bytes_are_refused() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_any(cast(bytes, "not bytes"))
    assert caught.value.reason is Reason.BAD_MSGPACK


# --- trigger requests: what the dispatcher refuses them for ------------------------------


@pytest.mark.parametrize(
    "vector",
    [p.values[1] for p in _cases("invalid") if p.values[0] == "trigger-request"],
    ids=lambda v: v["name"],
)
def test_invalid_request_vector_is_refused_for_its_refusal(vector: dict[str, Any]) -> None:
    with pytest.raises(RequestRefused) as caught:
        read_request(bytes.fromhex(vector["hex"]))
    assert caught.value.reason is RefusalReason(vector["refusal"])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event": "ccim32_startcycle"}, RefusalReason.BAD_EVENT_NAME),
        ({"event": "CCIM32-STARTCYCLE"}, RefusalReason.BAD_EVENT_NAME),
        ({"groups": []}, RefusalReason.NO_TARGETS),
        ({"groups": [], "all": False}, RefusalReason.NO_TARGETS),
        ({"v": [2, 0]}, RefusalReason.UNSUPPORTED_VERSION),
        ({"ttl": "1h"}, RefusalReason.BAD_REQUEST),
        ({"spread": 7200}, RefusalReason.BAD_REQUEST),
    ],
)
def test_request_refusal_reasons(changes: dict[str, Any], reason: RefusalReason) -> None:
    body = {**msgpack.unpackb(encode(REQUEST)), **changes}
    with pytest.raises(RequestRefused) as caught:
        read_request(msgpack.packb(body))
    assert caught.value.reason is reason


def test_request_refusals_for_bytes() -> None:
    with pytest.raises(RequestRefused) as caught:
        read_request(b"\xc1")
    assert caught.value.reason is RefusalReason.UNDECODABLE
    with pytest.raises(RequestRefused) as caught:
        read_request(b"\x80" + b" " * MAX_BODY)
    assert caught.value.reason is RefusalReason.TOO_LARGE


def test_reply_statuses_need_their_fields() -> None:
    with pytest.raises(ValueError, match="accepted needs"):
        TriggerReply(status="accepted", replied_at=1.0)
    with pytest.raises(ValueError, match="refused needs"):
        TriggerReply(status="refused", replied_at=1.0)
    assert TriggerReply(status="accepted", replied_at=1.0, storm_id="s", targets=1).accepted


STORM_FIELDS = {
    "component": "CCIM32",
    "event": "STARTCYCLE",
    "silent": True,
    "requested_by": "ops@site",
    "storm_id": "storm-20261121-120000-abcdef",
    "force": False,
}
VARYING = ("command_id", "client_id", "issued_at", "expires_at", "not_before")


def storm_encoding(trusted: bool = False, **fields: Any) -> Any:
    """How a storm encodes its commands: one template, the varying fields per command."""
    template = Command(command_id="0", client_id="0", issued_at=0.0, expires_at=0.0, **fields)
    return encoding(template, VARYING, trusted=trusted)


@settings(max_examples=200, deadline=None)
@given(
    command_id=st.from_regex(ID_PATTERN, fullmatch=True),
    client_id=st.from_regex(ID_PATTERN, fullmatch=True),
    issued_at=st.floats(min_value=0, max_value=YEAR_3000 - 7200),
    ttl=st.floats(min_value=0, max_value=3600),
    not_before=st.one_of(st.none(), st.floats(min_value=0, max_value=YEAR_3000)),
    shared=st.fixed_dictionaries(
        {"silent": st.booleans(), "force": st.booleans(), "storm_id": st.none() | st.just("s1")}
    ),
    trusted=st.booleans(),
)
def test_storm_encoding_writes_what_encode_writes(
    command_id: str,
    client_id: str,
    issued_at: float,
    ttl: float,
    not_before: float | None,
    shared: dict[str, Any],
    trusted: bool,
) -> None:
    """Checked per call or vouched for by the caller, the bytes are encode()'s."""
    fields = {**STORM_FIELDS, **shared}
    encode_one = storm_encoding(trusted, **fields)
    body = encode_one(
        command_id=command_id,
        client_id=client_id,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        not_before=not_before,
    )
    command = Command(
        command_id=command_id,
        client_id=client_id,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        not_before=not_before,
        **fields,
    )
    assert body == encode(command)
    assert decode(body, Command) == command


@pytest.mark.parametrize(
    ("command_id", "client_id", "issued_at", "expires_at", "not_before", "field"),
    [
        ("c1", "PC042\n", 10.0, 20.0, None, "client_id"),
        ("c1", "", 10.0, 20.0, None, "client_id"),
        ("c 1", "PC042", 10.0, 20.0, None, "command_id"),
        ("c1", "PC042", math.nan, 20.0, None, "issued_at"),
        ("c1", "PC042", 10.0, YEAR_3000 * 1000, None, "expires_at"),
        ("c1", "PC042", 10.0, 5.0, None, "expires_at"),
        ("c1", "PC042", 10.0, 20.0, -1.0, "not_before"),
        ("c1", "PC042", 10.0, 20.0, True, "not_before"),
    ],
)
def test_storm_encoding_refuses_what_command_refuses(
    command_id: str,
    client_id: str,
    issued_at: float,
    expires_at: float,
    not_before: Any,
    field: str,
) -> None:
    encode_one = storm_encoding(**STORM_FIELDS)
    with pytest.raises(FieldError) as by_encoder:
        encode_one(
            command_id=command_id,
            client_id=client_id,
            issued_at=issued_at,
            expires_at=expires_at,
            not_before=not_before,
        )
    with pytest.raises(FieldError) as by_command:
        Command(
            command_id=command_id,
            client_id=client_id,
            issued_at=issued_at,
            expires_at=expires_at,
            not_before=not_before,
            **STORM_FIELDS,
        )
    assert by_encoder.value.field == by_command.value.field == field


@pytest.mark.parametrize(
    ("command_id", "client_id", "not_before", "field"),
    [
        ("c1", "PC042\n", None, "client_id"),
        ("c 1", "PC042", None, "command_id"),
        ("c1", "PC042", -1.0, "not_before"),
        ("c1", "PC042", True, "not_before"),
    ],
)
def test_check_fields_refuses_what_command_refuses(
    command_id: str, client_id: str, not_before: Any, field: str
) -> None:
    """What a storm checks once per target before it encodes them trusted."""
    names = ("command_id", "client_id", "not_before")
    with pytest.raises(FieldError) as checked:
        check_fields(Command, names, (command_id, client_id, not_before))
    assert checked.value.field == field
    check_fields(Command, names, ("c1", "PC042", None))
    check_fields(Command, names, ("c1", "PC042", 5.0))


def test_trusted_encoding_wants_every_varying_field() -> None:
    encode_one = storm_encoding(True, **STORM_FIELDS)
    with pytest.raises(TypeError, match="expected the fields"):
        encode_one(command_id="c1", client_id="PC042", issued_at=1.0, expires_at=2.0)


def test_storm_encoding_refuses_bad_shared_fields() -> None:
    with pytest.raises(ValueError, match="component"):
        storm_encoding(**{**STORM_FIELDS, "component": "ccim32"})


# Anything msgpack can carry: str and bytes keys side by side, ext types, huge and
# negative ints, NaN and infinities, nesting.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
_KEYS = st.text(max_size=12) | st.binary(max_size=12)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_FIELD_NAMES = st.sampled_from(
    sorted({name for cls in MESSAGE_TYPES.values() for name in field_specs(cls)} | {"t", "v"})
)


@settings(max_examples=400, deadline=None)
@given(
    wire_type=st.sampled_from(sorted(MESSAGE_TYPES)),
    fields=st.dictionaries(_FIELD_NAMES | _KEYS, _ANY, max_size=12),
    minor=st.sampled_from([0, 1, 2**32]),
)
def test_any_msgpack_map_decodes_or_raises_decode_error(
    wire_type: str, fields: dict[Any, Any], minor: int
) -> None:
    """Whatever a compromised peer packs, decoding ends in a message or a DecodeError."""
    body = msgpack.packb({"t": wire_type, "v": [1, minor], **fields}, use_bin_type=True)
    try:
        decode_any(body)
    except DecodeError as exc:
        assert exc.reason in set(Reason)
        assert len(exc.detail) <= 1024


def test_a_bytes_field_name_is_a_decode_error_not_a_crash() -> None:
    body = msgpack.packb({b"x": 1, "t": "ack", "v": [1, 0]}, use_bin_type=True)
    with pytest.raises(DecodeError, match="field names must be strings"):
        decode_any(body)
