"""(Re)generate the language-neutral test vectors in ``schemas/vectors/``.

Each ``<type>.json`` lists msgpack bodies (as hex) that every implementation of the wire
format must treat alike: a ``valid`` one decodes to the message in its ``fields``, an
``invalid`` one is refused with its ``reason``. Ids and timestamps are fixed, so running
this twice writes the same files; ``tests/unit/test_codec.py`` checks that the files on
disk are what this script makes now.

Usage, from anywhere: ``python scripts/make_vectors.py [--check]``.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script, the project root is not on the path
    sys.path.insert(0, str(ROOT))

from schemas.codec import MAX_BODY, encode  # noqa: E402
from schemas.messages import (  # noqa: E402
    Ack,
    Command,
    Heartbeat,
    Issued,
    Message,
    PublishCount,
    PublishReport,
    TriggerReply,
    TriggerRequest,
    TriggerSummary,
)
from schemas.refusals import RequestRefused, read_request  # noqa: E402
from schemas.rules import field_specs  # noqa: E402

VECTOR_DIR = ROOT / "schemas" / "vectors"
Vector = dict[str, Any]
Body = dict[str, Any]

FORMAT = (
    "Decode each hex body as a message of this type. A 'valid' body decodes to the message "
    "whose fields are in 'fields' (absent optional fields are left out; timestamps are "
    "seconds and compare as numbers); a 'canonical' one is also exactly what an encoder "
    "writes for that message (keys t, v, then the fields in schema order; floats as "
    "float64; absent optional fields left out, not nil). An 'invalid' body is refused "
    "with 'reason' (other reasons listed in 'also_acceptable' conform too). Unless "
    "'schema_checkable' is false, an invalid body that is msgpack also fails the JSON "
    "Schema in schemas/json/."
)
REFUSALS = (
    "Each invalid body's 'refusal' is the reason the dispatcher's trigger-reply gives when "
    "it refuses that body (status 'refused')."
)


@dataclass(frozen=True)
class Raw:
    """Bytes spliced unchanged into a hand-built msgpack map."""

    data: bytes


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def pack_map(body: dict[Any, Any]) -> bytes:
    """``body`` as a msgpack map, in its order, with :class:`Raw` values spliced in as they are."""
    count = len(body)
    parts = [bytes([0x80 | count]) if count < 16 else b"\xde" + struct.pack(">H", count)]
    for key, value in body.items():
        parts += [pack(key), value.data if isinstance(value, Raw) else pack(value)]
    return b"".join(parts)


def int64(value: int) -> Raw:
    return Raw(b"\xd3" + struct.pack(">q", value))


def float32(value: float) -> Raw:
    return Raw(b"\xca" + struct.pack(">f", value))


def str8(value: str) -> Raw:
    data = value.encode()
    return Raw(b"\xd9" + bytes([len(data)]) + data)


def wire(message: Message) -> Body:
    """The map an encoder writes for ``message``, to derive invalid bodies from."""
    body: Body = msgpack.unpackb(encode(message))
    return body


def changed(body: Body, **changes: Any) -> Body:
    """``body`` with fields replaced in place (new ones appended) or, given ``...``, removed."""
    merged = {**body, **changes}
    return {key: value for key, value in merged.items() if value is not ...}


def fields_of(message: Message) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in field_specs(type(message)):
        value = getattr(message, name)
        if isinstance(value, tuple):
            value = [asdict(item) if isinstance(item, PublishCount) else item for item in value]
        if value is not None:
            fields[name] = value
    return fields


def valid(name: str, data: bytes, message: Message, note: str = "") -> Vector:
    vector: Vector = {"name": name, "canonical": encode(message) == data}
    if note:
        vector["note"] = note
    return {**vector, "hex": data.hex(), "fields": fields_of(message)}


def invalid(
    name: str,
    data: bytes | Body | list[Any],
    reason: str,
    why: str,
    *,
    schema_checkable: bool = True,
    also_acceptable: tuple[str, ...] = (),
) -> Vector:
    body = data if isinstance(data, bytes) else pack(data)
    vector: Vector = {"name": name, "hex": body.hex(), "reason": reason, "why": why}
    if also_acceptable:
        vector["also_acceptable"] = list(also_acceptable)
    if not schema_checkable:
        vector["schema_checkable"] = False
    return vector


BAD = "bad-message"
BAD_MSGPACK = "bad-msgpack"
UNSUPPORTED = "unsupported-version"
NEWER = [1, 7]
ID64 = "A" + "b1_.-" * 12 + "xyz"
NAME32 = "C" + "OMPONENT9" * 3 + "XYZW"
NO_JSON = " (JSON has no such value)"
INT_NOT_FLOAT = "JSON Schema counts 1.0 as an integer, but msgpack keeps it a float"

COMMAND = Command(
    command_id="c0ffee0000000000000000000000c001",
    client_id="PC042",
    component="CCIM32",
    event="STARTCYCLE",
    silent=False,
    issued_at=1700000000.25,
    expires_at=1700003600.25,
    requested_by="ops@console01",
)
COMMAND_FULL = replace(
    COMMAND,
    command_id="c0ffee0000000000000000000000c002",
    client_id="pc-042.lab_7",
    component="CQMGR32",
    silent=True,
    storm_id="storm-20231114-01",
    not_before=1700000030.5,
    force=True,
)
ACK = Ack(
    command_id=COMMAND.command_id,
    client_id="PC042",
    status="done",
    received_at=1700000001.5,
    agent_version="1.0.0",
)
ACK_FULL = replace(
    ACK,
    command_id=COMMAND_FULL.command_id,
    status="failed",
    component="CQMGR32",
    event="STARTCYCLE",
    issued_at=1700000000.25,
    storm_id="storm-20231114-01",
    received_at=1700000001.5,
    started_at=1700000030.5,
    finished_at=1700000043.25,
    wait_seconds=29.0,
    run_seconds=12.75,
    total_seconds=41.875,
    reason="signal-failed",
    detail="Cqmgr32.exe ended with an access violation",
    exit_code=-1073741819,
    output="Copy Queue: starting cycle\r\nZugriffsverletzung \u00e0 0x0040\n",
)
HEARTBEAT = Heartbeat(
    client_id="PC042", kind="hello", sent_at=1700000000.75, platform="nt", agent_version="1.0.0"
)
HEARTBEAT_FULL = replace(
    HEARTBEAT,
    client_id="PC095",
    kind="heartbeat",
    platform="win9x",
    groups=("lab-7", "floor.3"),
    components={"CLISVC95": "2.0.1493.2000", "CCIM32": "2.0.1493.2000", "CQMGR32": "2.0"},
    copylist_version="2023-11-14.1",
)
REPORT = PublishReport(
    publisher="setevnt-dispatcher@console01", published_at=1700000000.5, counts=()
)
REPORT_FULL = replace(
    REPORT,
    counts=(
        PublishCount("CCIM32", "STARTCYCLE", "sent", 9998),
        PublishCount("CCIM32", "STARTCYCLE", "unroutable", 1),
        PublishCount("CQMGR32", "STARTCYCLE", "nacked", 0),
        PublishCount("CQMGR32", "STARTCYCLE", "sent", 2**31 - 1),
    ),
)


def common_invalid(
    message: Message, other: Message, required: tuple[str, ...] = ("client_id", "publisher")
) -> list[Vector]:
    """Byte-level and header faults, the same for every message type."""
    good = encode(message)
    body = wire(message)
    return [
        invalid("not msgpack (0xc1)", b"\xc1", BAD_MSGPACK, "0xc1 is never used in msgpack"),
        invalid("truncated", good[:-3], BAD_MSGPACK, "the body ends inside the map"),
        invalid(
            "trailing bytes", good + b"\xc0", BAD_MSGPACK, "a body is exactly one msgpack value"
        ),
        invalid("not a map", [body["t"], [1, 0]], BAD, "a message is a msgpack map"),
        invalid("missing type tag", changed(body, t=...), BAD, "t is required"),
        invalid("unknown type tag", changed(body, t=body["t"].upper()), BAD, "tags are exact"),
        invalid(
            f"wrong message type ({other.WIRE_TYPE})",
            encode(other),
            BAD,
            f"a valid {other.WIRE_TYPE} is not a {message.WIRE_TYPE}",
        ),
        invalid("missing v", changed(body, v=...), BAD, "v is required"),
        invalid("v not a list", changed(body, v="1.0"), BAD, "v is [major, minor]"),
        invalid("v with three numbers", changed(body, v=[1, 0, 0]), BAD, "v is [major, minor]"),
        invalid("v with a negative minor", changed(body, v=[1, -1]), BAD, "versions are >= 0"),
        invalid(
            "v as floats",
            changed(body, v=[1.0, 0.0]),
            BAD,
            "version numbers are integers; " + INT_NOT_FLOAT,
            schema_checkable=False,
        ),
        invalid("major version 2", changed(body, v=[2, 0]), UNSUPPORTED, "only 1.x is known"),
        invalid("major version 0", changed(body, v=[0, 9]), UNSUPPORTED, "only 1.x is known"),
        invalid(
            "major version 2 with other fields",
            {"t": body["t"], "v": [2, 0], "targets": {"groups": ["lab-7"]}},
            UNSUPPORTED,
            "the version is checked before the fields",
        ),
        invalid(
            "unknown field at the same minor",
            changed(body, priority=5),
            BAD,
            "at the reader's own minor an unknown field is an error",
        ),
        invalid(
            "newer minor does not excuse a missing field",
            changed(body, v=NEWER, priority=5, **dict.fromkeys(required, ...)),
            BAD,
            "a newer minor only adds optional fields",
        ),
    ]


def command_vectors() -> Vector:
    body = wire(COMMAND)
    full = wire(COMMAND_FULL)
    longest = replace(
        COMMAND,
        command_id=ID64,
        client_id=ID64[::-1].replace("-", "Z"),
        component=NAME32,
        event=NAME32[::-1],
        requested_by="\u00e9" * 64 + "\U0001f600" * 64,
    )
    limits = replace(COMMAND, issued_at=0.0, expires_at=32503680000.0)
    same = replace(COMMAND, expires_at=COMMAND.issued_at)
    ints = changed(body, issued_at=1700000000, expires_at=1700003600)
    wide = changed(
        body,
        client_id=str8(COMMAND.client_id),
        issued_at=int64(1700000000),
        expires_at=int64(1700003600),
        requested_by=str8(COMMAND.requested_by),
    )
    narrow = changed(body, issued_at=float32(1700000000.0), expires_at=1700003840.0)
    return {
        "valid": [
            valid("minimal", encode(COMMAND), COMMAND),
            valid("all optional fields set", encode(COMMAND_FULL), COMMAND_FULL),
            valid(
                "longest values",
                encode(longest),
                longest,
                "lengths count code points: requested_by is 128 characters, 384 UTF-8 bytes",
            ),
            valid("timestamp limits", encode(limits), limits, "0 and the year 3000 are allowed"),
            valid("expires when issued", encode(same), same, "expires_at may equal issued_at"),
            valid(
                "integer timestamps",
                pack(ints),
                replace(COMMAND, issued_at=1700000000.0, expires_at=1700003600.0),
                "other encoders write whole seconds as integers",
            ),
            valid(
                "int64 timestamps and str8 strings",
                pack_map(wide),
                replace(COMMAND, issued_at=1700000000.0, expires_at=1700003600.0),
                "msgpack allows wider encodings than the shortest one",
            ),
            valid(
                "float32 timestamp",
                pack_map(narrow),
                replace(COMMAND, issued_at=1700000000.0, expires_at=1700003840.0),
                "a float32 is a msgpack float too",
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, priority=5, trace={"hops": [1, 2]})),
                COMMAND,
                "fields added by a newer 1.x are ignored",
            ),
            valid("force left out", pack(changed(body, force=...)), COMMAND, "force means false"),
            valid(
                "optional fields as nil",
                pack(changed(body, storm_id=None, not_before=None)),
                COMMAND,
                "nil is the same as absent for an optional field",
            ),
            valid(
                "keys in reverse order",
                pack(dict(reversed(full.items()))),
                COMMAND_FULL,
                "the order of the keys does not matter, not even for t and v",
            ),
        ],
        "invalid": [
            *common_invalid(COMMAND, HEARTBEAT),
            invalid("empty body", b"", BAD_MSGPACK, "no msgpack value at all"),
            invalid("missing client_id", changed(body, client_id=...), BAD, "required"),
            invalid("missing expires_at", changed(body, expires_at=...), BAD, "required"),
            invalid("client_id nil", changed(body, client_id=None), BAD, "nil is not a string"),
            invalid("force nil", changed(body, force=None), BAD, "force may be absent, not nil"),
            invalid("string given an integer", changed(body, client_id=42), BAD, "type"),
            invalid("bool given an integer", changed(body, silent=1), BAD, "1 is not true"),
            invalid("bool given a string", changed(body, force="true"), BAD, "type"),
            invalid("number given a string", changed(body, issued_at="1700000000.25"), BAD, "type"),
            invalid(
                "string given as bin",
                changed(body, requested_by=b"ops@console01"),
                BAD,
                "strings are msgpack str, not bin" + NO_JSON,
                schema_checkable=False,
            ),
            invalid(
                "timestamp as a msgpack timestamp extension",
                changed(body, issued_at=msgpack.Timestamp(1700000000)),
                BAD,
                "timestamps are plain numbers of seconds" + NO_JSON,
                schema_checkable=False,
            ),
            invalid("requested_by too long", changed(body, requested_by="x" * 129), BAD, ">128"),
            invalid("command_id too long", changed(body, command_id=ID64 + "9"), BAD, ">64"),
            invalid("component too long", changed(body, component=NAME32 + "A"), BAD, ">32"),
            invalid(
                "lower-case component", changed(body, component="ccim32"), BAD, "case-sensitive"
            ),
            invalid("lower-case event", changed(body, event="startcycle"), BAD, "case-sensitive"),
            invalid("client id with a space", changed(body, client_id="PC 042"), BAD, "pattern"),
            invalid(
                "client id with a trailing newline",
                changed(body, client_id="PC042\n"),
                BAD,
                "the pattern must match the whole string; in several regex engines "
                "(Python's re.match, PCRE, Ruby) '$' also matches before a final newline",
            ),
            invalid("empty client id", changed(body, client_id=""), BAD, "1 to 64 characters"),
            invalid(
                "newer minor does not excuse a bad field",
                changed(body, v=NEWER, priority=5, silent="yes"),
                BAD,
                "known fields are checked at every minor",
            ),
            invalid("negative timestamp", changed(body, issued_at=-1.0), BAD, "must be >= 0"),
            invalid(
                "timestamps in milliseconds",
                changed(body, issued_at=1700000000250, expires_at=1700003600250),
                BAD,
                "beyond the year 3000: the unit is seconds",
            ),
            invalid(
                "NaN timestamp",
                changed(body, not_before=math.nan),
                BAD,
                "timestamps are finite" + NO_JSON,
                schema_checkable=False,
            ),
            invalid(
                "infinite timestamp",
                changed(body, expires_at=math.inf),
                BAD,
                "timestamps are finite" + NO_JSON,
                schema_checkable=False,
            ),
            invalid(
                "expires_at before issued_at",
                changed(body, expires_at=1699999999.0),
                BAD,
                "a command cannot expire before it is issued (a rule JSON Schema cannot express)",
                schema_checkable=False,
            ),
            huge_body(body),
            invalid(
                "deeply nested arrays",
                pack_map(changed(body, requested_by=Raw(b"\x91" * 2000 + b"\xc0"))),
                BAD_MSGPACK,
                "2000 nested arrays in requested_by: a decoder must refuse this without "
                "exhausting its stack (the reference msgpack stops at depth 1024)",
                also_acceptable=(BAD,),
            ),
            invalid(
                "invalid UTF-8 in a string",
                pack_map(changed(body, requested_by=Raw(b"\xa4op\xff\xfe"))),
                BAD_MSGPACK,
                "msgpack str is UTF-8; a decoder that keeps raw bytes must refuse it too",
                also_acceptable=(BAD,),
            ),
            invalid(
                "integer map key",
                pack_map({**body, 1: "one"}),
                BAD_MSGPACK,
                "keys are strings (the reference msgpack refuses other keys while unpacking)",
                also_acceptable=(BAD,),
            ),
        ],
    }


def huge_body(body: Body) -> Vector:
    """A body one byte over the limit, though valid otherwise (at a newer minor)."""
    base = len(pack(changed(body, v=NEWER, padding="")))
    padded = pack(changed(body, v=NEWER, padding="x" * (MAX_BODY + 1 - base - 2)))
    assert len(padded) == MAX_BODY + 1, len(padded)
    return invalid(
        "body over 64 KiB",
        padded,
        BAD,
        f"{MAX_BODY + 1} bytes, refused before unpacking though valid otherwise (JSON Schema "
        "does not see the body's size)",
        schema_checkable=False,
    )


def ack_vectors() -> Vector:
    body = wire(ACK)
    longest = replace(ACK, detail="d" * 1024, output="o" * 2047 + "\u00e9", exit_code=2**31 - 1)
    unknown = replace(
        ACK, command_id="", status="rejected", reason="bad-msgpack", detail="not msgpack"
    )
    numbers = {"received_at": 1700000001, "wait_seconds": 0, "run_seconds": 12}
    return {
        "valid": [
            valid("minimal", encode(ACK), ACK),
            valid("all optional fields set", encode(ACK_FULL), ACK_FULL),
            valid("longest values", encode(longest), longest),
            valid("empty command_id", encode(unknown), unknown, "the command had no id"),
            valid(
                "integer timestamps and durations",
                pack(changed(body, **numbers)),
                replace(ACK, received_at=1700000001.0, wait_seconds=0.0, run_seconds=12.0),
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, cpu_seconds=0.25)),
                ACK,
                "fields added by a newer 1.x are ignored",
            ),
        ],
        "invalid": [
            *common_invalid(ACK, COMMAND),
            invalid("missing received_at", changed(body, received_at=...), BAD, "required"),
            invalid("missing agent_version", changed(body, agent_version=...), BAD, "required"),
            invalid("bad status", changed(body, status="ok"), BAD, "not one of the statuses"),
            invalid("bad reason", changed(body, reason="timeout"), BAD, "not one of the reasons"),
            invalid("exit_code given a string", changed(body, exit_code="1"), BAD, "type"),
            invalid("exit_code given a bool", changed(body, exit_code=True), BAD, "type"),
            invalid(
                "exit_code given a float",
                changed(body, exit_code=2.0),
                BAD,
                "exit codes are integers; " + INT_NOT_FLOAT,
                schema_checkable=False,
            ),
            invalid(
                "exit_code unsigned",
                changed(body, exit_code=3221225477),
                BAD,
                "a signed 32-bit integer: send 0xC0000005 as -1073741819",
            ),
            invalid("negative duration", changed(body, wait_seconds=-0.5), BAD, "must be >= 0"),
            invalid("duration given a string", changed(body, run_seconds="12"), BAD, "type"),
            invalid("detail too long", changed(body, detail="d" * 1025), BAD, ">1024"),
            invalid("output too long", changed(body, output="o" * 2049), BAD, ">2048"),
            invalid("agent_version too long", changed(body, agent_version="1" * 33), BAD, ">32"),
            invalid("command_id with a space", changed(body, command_id="c 1"), BAD, "pattern"),
            invalid("lower-case component", changed(body, component="cqmgr32"), BAD, "pattern"),
        ],
    }


def heartbeat_vectors() -> Vector:
    body = wire(HEARTBEAT)
    most = replace(
        HEARTBEAT,
        groups=tuple(f"group-{n:02d}" for n in range(32)),
        components={f"COMPONENT{n:02d}": "v" * 64 for n in range(64)},
    )
    return {
        "valid": [
            valid("minimal", encode(HEARTBEAT), HEARTBEAT),
            valid("all optional fields set", encode(HEARTBEAT_FULL), HEARTBEAT_FULL),
            valid("most groups and components", encode(most), most, "32 groups, 64 components"),
            valid(
                "groups and components left out",
                pack(changed(body, groups=..., components=...)),
                HEARTBEAT,
                "absent means none",
            ),
            valid(
                "integer timestamp",
                pack(changed(body, sent_at=1700000000)),
                replace(HEARTBEAT, sent_at=1700000000.0),
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, uptime_seconds=86400)),
                HEARTBEAT,
                "fields added by a newer 1.x are ignored",
            ),
            valid(
                "copylist_version nil",
                pack(changed(body, copylist_version=None)),
                HEARTBEAT,
                "nil is the same as absent for an optional field",
            ),
        ],
        "invalid": [
            *common_invalid(HEARTBEAT, ACK),
            invalid("missing platform", changed(body, platform=...), BAD, "required"),
            invalid("bad kind", changed(body, kind="ping"), BAD, "hello, heartbeat or goodbye"),
            invalid("bad platform", changed(body, platform="linux"), BAD, "nt or win9x"),
            invalid("upper-case platform", changed(body, platform="NT"), BAD, "case-sensitive"),
            invalid("groups given a string", changed(body, groups="lab-7"), BAD, "a list"),
            invalid("groups nil", changed(body, groups=None), BAD, "may be absent, not nil"),
            invalid("group given an integer", changed(body, groups=[7]), BAD, "ids are strings"),
            invalid("group with a space", changed(body, groups=["lab 7"]), BAD, "pattern"),
            invalid(
                "too many groups", changed(body, groups=[f"g{n}" for n in range(33)]), BAD, ">32"
            ),
            invalid("components given a list", changed(body, components=["CCIM32"]), BAD, "map"),
            invalid(
                "lower-case component name",
                changed(body, components={"ccim32": "2.0"}),
                BAD,
                "names are upper case",
            ),
            invalid(
                "component version given a number",
                changed(body, components={"CCIM32": 2}),
                BAD,
                "versions are strings",
            ),
            invalid(
                "component version too long",
                changed(body, components={"CCIM32": "v" * 65}),
                BAD,
                ">64",
            ),
            invalid(
                "too many components",
                changed(body, components={f"C{n}": "1" for n in range(65)}),
                BAD,
                ">64",
            ),
            invalid(
                "timestamp in milliseconds",
                changed(body, sent_at=1700000000750),
                BAD,
                "beyond the year 3000: the unit is seconds",
            ),
        ],
    }


def report_vectors() -> Vector:
    body = wire(REPORT)
    entry = {"component": "CCIM32", "event": "STARTCYCLE", "result": "sent", "count": 1}
    tiny = {"component": "A", "event": "B", "result": "sent", "count": 0}
    most = replace(REPORT, counts=(PublishCount("A", "B", "sent", 0),) * 256)

    def counts(**changes: Any) -> Body:
        return changed(body, counts=[changed(entry, **changes)])

    return {
        "valid": [
            valid("minimal", encode(REPORT), REPORT, "an empty batch"),
            valid("several counts", encode(REPORT_FULL), REPORT_FULL, "0 and 2**31-1 allowed"),
            valid("most counts", encode(most), most, "256 entries"),
            valid(
                "integer timestamp",
                pack(changed(body, published_at=1700000000)),
                replace(REPORT, published_at=1700000000.0),
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, batch=3)),
                REPORT,
                "fields added by a newer 1.x are ignored",
            ),
        ],
        "invalid": [
            *common_invalid(REPORT, HEARTBEAT),
            invalid("missing counts", changed(body, counts=...), BAD, "required"),
            invalid("counts nil", changed(body, counts=None), BAD, "a list"),
            invalid("counts given a map", changed(body, counts=entry), BAD, "a list"),
            invalid("count entry not a map", changed(body, counts=[["CCIM32"]]), BAD, "a map"),
            invalid("count entry missing count", counts(count=...), BAD, "four keys"),
            invalid("count entry with an extra key", counts(rate=0.5), BAD, "four keys"),
            invalid(
                "count entry with an extra key at a newer minor",
                changed(counts(rate=0.5), v=NEWER),
                BAD,
                "count entries are closed at every minor",
            ),
            invalid("bad result", counts(result="dropped"), BAD, "sent, unroutable or nacked"),
            invalid("negative count", counts(count=-1), BAD, "counts are >= 0"),
            invalid("count given a string", counts(count="1"), BAD, "type"),
            invalid("count given a bool", counts(count=True), BAD, "type"),
            invalid(
                "count given a float",
                counts(count=2.0),
                BAD,
                "counts are integers; " + INT_NOT_FLOAT,
                schema_checkable=False,
            ),
            invalid("count too large", counts(count=2**31), BAD, "a signed 32-bit integer"),
            invalid("lower-case component", counts(component="ccim32"), BAD, "pattern"),
            invalid("too many counts", changed(body, counts=[tiny] * 257), BAD, ">256"),
            invalid("publisher too long", changed(body, publisher="p" * 129), BAD, ">128"),
            invalid("negative timestamp", changed(body, published_at=-0.5), BAD, ">= 0"),
        ],
    }


ISSUED = Issued(
    publisher="setevnt-cli",
    status="planned",
    component="CCIM32",
    event="STARTCYCLE",
    issued_at=1700000000.5,
    expires_at=1700003600.5,
    commands={"5f0e3a9c2b7d4e1fa6c8b0d9e2f41357": "PC042"},
)


def issued_vectors() -> Vector:
    body = wire(ISSUED)
    most = replace(ISSUED, commands={f"c{n}": "PC042" for n in range(500)})
    sent = replace(ISSUED, status="sent", commands={"c1": "PC042", "c2": "pc-043.lab_7"})
    waiting = replace(
        ISSUED,
        status="waiting-node",
        requested_by="ops@console",
        silent=True,
        force=False,
        not_before=1700000060.0,
    )
    return {
        "valid": [
            valid("planned", encode(ISSUED), ISSUED),
            valid("sent, two clients", encode(sent), sent),
            valid(
                "waiting-node",
                encode(waiting),
                waiting,
                "what the service needs to send the commands again when the node is back",
            ),
            valid("most commands", encode(most), most, "500 entries"),
            valid("none", encode(replace(ISSUED, commands={})), replace(ISSUED, commands={})),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, batch=3)),
                ISSUED,
                "fields added by a newer 1.x are ignored",
            ),
        ],
        "invalid": [
            *common_invalid(ISSUED, REPORT),
            invalid("missing commands", changed(body, commands=...), BAD, "required"),
            invalid("commands a list", changed(body, commands=["c1"]), BAD, "a map"),
            invalid("bad status", changed(body, status="done"), BAD, "a broker outcome"),
            invalid("silent not a boolean", changed(body, silent="yes"), BAD, "type"),
            invalid(
                "bad command id",
                changed(body, commands={"-c1": "PC042"}),
                BAD,
                "ids start with a letter or digit",
            ),
            invalid("bad client id", changed(body, commands={"c1": "PC 42"}), BAD, "pattern"),
            invalid("client id not a string", changed(body, commands={"c1": 42}), BAD, "type"),
            invalid(
                "too many commands",
                changed(body, commands={f"c{n}": "P" for n in range(501)}),
                BAD,
                "> 500",
            ),
            invalid(
                "expires before issued",
                changed(body, expires_at=1700000000.0),
                BAD,
                "a rule JSON Schema cannot express",
                schema_checkable=False,
            ),
        ],
    }


REQUEST = TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC042",))
REQUEST_FULL = TriggerRequest(
    event="CQMGR32_STARTCYCLE",
    clients=("PC042", "pc-043.lab_7"),
    groups=("lab-7",),
    all=False,
    silent=True,
    force=True,
    ttl=600.0,
    rate=200.0,
    spread=60.0,
    delivery_wait=30.0,
    max_errors=5,
    idempotency_key="ticket-4711",
)
ACCEPTED = TriggerReply(
    status="accepted", replied_at=1700000000.5, storm_id="storm-20231114-221320-a1b2c3", targets=2
)
REFUSED = TriggerReply(
    status="refused",
    replied_at=1700000000.5,
    reason="not-permitted",
    detail="helpdesk may not trigger CLISVCL_CLOSE",
    idempotency_key="ticket-4711",
)
# The policy's two refusals that a requester acts on differently: fix the request, or wait.
OVER_LIMIT = replace(
    REFUSED, reason="over-limit", detail="ttl 30d is above max_ttl 1d", idempotency_key=None
)
RATE_LIMITED = replace(
    REFUSED,
    reason="rate-limited",
    detail="helpdesk may make max_requests 30 per 1m: retry in 12s",
    idempotency_key=None,
)
SUMMARY = TriggerSummary(
    storm_id=ACCEPTED.storm_id or "",
    event="CCIM32_STARTCYCLE",
    state="done",
    targets=2,
    published=2,
    counts={"done": 1, "pending-offline": 1},
    finished_at=1700000031.25,
    latency_p50=0.125,
    latency_p95=0.125,
    latency_p99=0.125,
)


def refusal(vector: Vector) -> Vector:
    """A trigger-request vector with the reason the dispatcher refuses its body for."""
    try:
        read_request(bytes.fromhex(vector["hex"]))
    except RequestRefused as refused:
        return {**vector, "refusal": refused.reason.value}
    raise AssertionError(f"{vector['name']}: the dispatcher would accept it")


def request_vectors() -> Vector:
    body = wire(REQUEST)
    everyone = TriggerRequest(event="SMSAPM32_STARTCYCLE", all=True)
    longest = replace(REQUEST, clients=tuple(f"PC{n:05d}" for n in range(1000)))
    invalid_ones = [
        *common_invalid(REQUEST, HEARTBEAT, required=("event",)),
        invalid("no targets", changed(body, clients=[]), BAD, "clients, groups or all"),
        invalid("targets left out", changed(body, clients=...), BAD, "a request needs targets"),
        invalid("all false alone", changed(body, clients=..., all=False), BAD, "no targets"),
        invalid("lower-case event", changed(body, event="ccim32_startcycle"), BAD, "exact"),
        invalid("event without its component", changed(body, event="STARTCYCLE"), BAD, "A_B"),
        invalid("client id with a space", changed(body, clients=["PC 042"]), BAD, "pattern"),
        invalid("too many clients", changed(body, clients=["PC"] * 1001), BAD, ">1000"),
        invalid("ttl zero", changed(body, ttl=0), BAD, "ttl must be positive"),
        invalid("ttl given a string", changed(body, ttl="1h"), BAD, "seconds, a number"),
        invalid(
            "spread not shorter than ttl",
            changed(body, ttl=60, spread=60),
            BAD,
            "late clients would expire (a rule JSON Schema cannot express)",
            schema_checkable=False,
        ),
        invalid("negative max_errors", changed(body, max_errors=-1), BAD, ">= 0"),
        invalid("all given a string", changed(body, all="yes"), BAD, "type"),
        invalid("bad idempotency key", changed(body, idempotency_key="a b"), BAD, "pattern"),
        huge_body(body),
    ]
    return {
        "refusals": REFUSALS,
        "valid": [
            valid("minimal", encode(REQUEST), REQUEST),
            valid("all optional fields set", encode(REQUEST_FULL), REQUEST_FULL),
            valid("every client", encode(everyone), everyone, "all alone is a target"),
            valid("most clients", encode(longest), longest, "1000 clients"),
            valid(
                "flags and lists left out",
                pack(
                    {
                        "t": "trigger-request",
                        "v": [1, 0],
                        "event": "CCIM32_STARTCYCLE",
                        "groups": ["lab-7"],
                    }
                ),
                TriggerRequest(event="CCIM32_STARTCYCLE", groups=("lab-7",)),
                "absent means empty or false",
            ),
            valid(
                "integer seconds",
                pack(changed(body, ttl=600, delivery_wait=30)),
                replace(REQUEST, ttl=600.0, delivery_wait=30.0),
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, priority=5)),
                REQUEST,
                "fields added by a newer 1.x are ignored",
            ),
        ],
        "invalid": [refusal(vector) for vector in invalid_ones],
    }


def reply_vectors() -> Vector:
    body = wire(ACCEPTED)
    return {
        "valid": [
            valid("accepted", encode(ACCEPTED), ACCEPTED),
            valid("refused", encode(REFUSED), REFUSED),
            valid("refused over a cap", encode(OVER_LIMIT), OVER_LIMIT, "fix the request"),
            valid("refused by a quota", encode(RATE_LIMITED), RATE_LIMITED, "retry later"),
            valid(
                "replayed",
                encode(replace(ACCEPTED, replayed=True, idempotency_key="ticket-4711")),
                replace(ACCEPTED, replayed=True, idempotency_key="ticket-4711"),
                "the answer to a retry with the same idempotency key",
            ),
            valid(
                "newer minor with unknown fields",
                pack(changed(body, v=NEWER, queue_position=3)),
                ACCEPTED,
                "fields added by a newer 1.x are ignored",
            ),
        ],
        "invalid": [
            *common_invalid(ACCEPTED, COMMAND, required=("status",)),
            invalid("bad status", changed(body, status="ok"), BAD, "accepted or refused"),
            invalid("accepted without storm_id", changed(body, storm_id=...), BAD, "required"),
            invalid("refused without reason", changed(wire(REFUSED), reason=...), BAD, "required"),
            invalid("unknown reason", changed(wire(REFUSED), reason="nope"), BAD, "enum"),
        ],
    }


def summary_vectors() -> Vector:
    body = wire(SUMMARY)
    bare = replace(SUMMARY, latency_p50=None, latency_p95=None, latency_p99=None)
    return {
        "valid": [
            valid("done", encode(SUMMARY), SUMMARY),
            valid(
                "halted, nothing answered",
                encode(replace(bare, state="halted", counts={"cancelled": 2}, reason="why")),
                replace(bare, state="halted", counts={"cancelled": 2}, reason="why"),
            ),
            valid(
                "integer timestamp",
                pack(changed(body, finished_at=1700000031)),
                replace(SUMMARY, finished_at=1700000031.0),
            ),
        ],
        "invalid": [
            *common_invalid(SUMMARY, ACK, required=("storm_id",)),
            invalid("bad state", changed(body, state="running"), BAD, "ended states only"),
            invalid("negative count", changed(body, counts={"done": -1}), BAD, ">= 0"),
            invalid("upper-case status", changed(body, counts={"DONE": 1}), BAD, "pattern"),
            invalid("count given a string", changed(body, counts={"done": "1"}), BAD, "type"),
        ],
    }


def build() -> dict[str, Vector]:
    """Every vector file's content, by message type."""
    made = {
        Command.WIRE_TYPE: command_vectors(),
        Ack.WIRE_TYPE: ack_vectors(),
        Heartbeat.WIRE_TYPE: heartbeat_vectors(),
        PublishReport.WIRE_TYPE: report_vectors(),
        Issued.WIRE_TYPE: issued_vectors(),
        TriggerRequest.WIRE_TYPE: request_vectors(),
        TriggerReply.WIRE_TYPE: reply_vectors(),
        TriggerSummary.WIRE_TYPE: summary_vectors(),
    }
    return {name: {"message": name, "format": FORMAT, **vectors} for name, vectors in made.items()}


def render(vectors: dict[str, Vector]) -> dict[str, str]:
    """File name to file text."""
    return {
        f"{name}.json": json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        for name, content in vectors.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render(build()).items():
        path = VECTOR_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            VECTOR_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "written"
    print(f"{verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
