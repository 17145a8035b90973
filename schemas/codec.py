"""The one codec: messages to msgpack bytes and back, validating fully on the way in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgpack

from schemas.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message, PublishCount, Reason
from schemas.rules import FieldRule, check_rule, field_rules, field_specs, needed_fields

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=Message)


class DecodeError(ValueError):
    """The bytes are not a valid message; ``reason`` is a bounded code for acks and metrics."""

    def __init__(self, reason: Reason, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field  # the field whose rule broke, when one did


def encode(message: Message) -> bytes:
    packed: bytes = msgpack.packb(_wire_fields(message), use_bin_type=True)
    return packed


def _wire_fields(message: Message) -> dict[str, Any]:
    cls = type(message)
    names = _WIRE_NAMES.get(cls) or _wire_names(cls)
    body: dict[str, Any] = {"t": cls.WIRE_TYPE, "v": list(SCHEMA_VERSION)}
    for name, nested in names:
        value = getattr(message, name)
        if value is None:
            continue  # absent optional fields are left out, not sent as nil
        if nested:
            value = [dataclasses.asdict(item) for item in value]
        body[name] = value
    return body


def _wire_names(cls: type[Message]) -> tuple[tuple[str, bool], ...]:
    """Each field's name in wire order, and whether it holds dataclasses to flatten."""
    names = tuple((name, spec.kind == "counts") for name, spec in field_specs(cls).items())
    _WIRE_NAMES[cls] = names
    return names


# Derived once per class: encode() runs once per command of a storm.
_WIRE_NAMES: dict[type[Message], tuple[tuple[str, bool], ...]] = {}


def encoding(template: M, varying: Sequence[str], *, trusted: bool = False) -> Callable[..., bytes]:
    """:func:`encode` of ``template`` with its ``varying`` fields given per call.

    For many messages alike but for a few fields (a storm's commands: one per client,
    built on the thread that publishes them): the bytes are those of :func:`encode` of the
    message with those fields replaced, but the fields all share are validated once, here,
    in ``template``, and only the varying ones per call, by the same rules. The returned
    function takes exactly the ``varying`` fields as keywords (a dict merge is the fastest
    way into the body) and raises ``FieldError`` where building the message would.

    ``trusted``: the caller vouches for the varying values, alone and together (checked
    beforehand with :func:`check_fields`, or made valid, like times from the clock), so
    none is checked per call; the bytes are the same.
    """
    cls = type(template)
    shared = _wire_fields(template)
    # In wire order, as encode() writes them (msgpack keeps a map's order).
    base = {"t": shared["t"], "v": shared["v"]}
    for name in field_specs(cls):
        if name in varying:
            base[name] = None
        elif name in shared:
            base[name] = shared[name]
    rules = field_rules(cls, varying)
    optional = tuple(rule[0] for rule in rules if not rule[1].required)
    if trusted:
        return _trusted(base, varying, optional)
    return _checking(base, varying, optional, rules, cls.check_across)


def _trusted(
    base: dict[str, Any], varying: Sequence[str], optional: Sequence[str]
) -> Callable[..., bytes]:
    # One packer for every message: msgpack.packb() would build one per call.
    pack = msgpack.Packer(use_bin_type=True).pack
    count = len(varying)

    def encode_trusted(**values: Any) -> bytes:
        if len(values) != count:
            raise TypeError(f"expected the fields {', '.join(varying)}")
        body = base.copy()
        body.update(values)
        for name in optional:
            if values[name] is None:
                del body[name]  # left out, as encode() leaves out absent fields
        packed: bytes = pack(body)
        return packed

    return encode_trusted


def _checking(
    base: dict[str, Any],
    varying: Sequence[str],
    optional: Sequence[str],
    rules: Sequence[FieldRule],
    across: Callable[[dict[str, Any]], None],
) -> Callable[..., bytes]:
    pack = msgpack.Packer(use_bin_type=True).pack

    def encode_one(**values: Any) -> bytes:
        if len(values) != len(rules):
            raise TypeError(f"expected the fields {', '.join(varying)}")
        for rule in rules:
            value = values[rule[0]]
            if not rule[2](value):  # the rule's quick acceptance; check_rule() says why not
                check_rule(rule, value)
        body = base.copy()
        body.update(values)
        for name in optional:
            if values[name] is None:
                del body[name]
        across(body)
        packed: bytes = pack(body)
        return packed

    return encode_one


def check_fields(cls: type[Message], names: Sequence[str], values: Sequence[Any]) -> None:
    """Check ``values`` by the rules of ``cls``'s fields ``names`` (in the same order), as
    building a message would: ``FieldError`` for the first that breaks its rule."""
    for rule, value in zip(field_rules(cls, names), values, strict=True):
        check_rule(rule, value)


def decode(data: bytes, expected: type[M]) -> M:
    """Decode ``data`` as an ``expected`` message or raise :class:`DecodeError`."""
    found = decode_any(data)
    if not isinstance(found, expected):
        raise DecodeError(
            Reason.BAD_MESSAGE, f"expected a {expected.WIRE_TYPE}, got a {found.WIRE_TYPE}"
        )
    return found


def decode_any(data: bytes) -> Message:
    """Decode any message; every failure, whatever the bytes, is a :class:`DecodeError`."""
    try:
        return _decode(data)
    except DecodeError:
        raise
    except Exception as exc:  # a case the rules below missed: still not the caller's crash
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise DecodeError(Reason.BAD_MESSAGE, detail, getattr(exc, "field", None)) from None


def _decode(data: bytes) -> Message:
    body = _unpack(data)
    cls = _message_type(body)
    minor = _check_version(body)
    fields = _fields(cls, body, newer_minor=minor > SCHEMA_VERSION[1])
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise DecodeError(Reason.BAD_MESSAGE, str(exc), getattr(exc, "field", None)) from None


def _unpack(data: bytes) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(Reason.BAD_MSGPACK, "body is not bytes")
    if len(data) > MAX_BODY:
        raise DecodeError(Reason.BAD_MESSAGE, f"body of {len(data)} bytes exceeds {MAX_BODY}")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises many unrelated types for bad input
        raise DecodeError(Reason.BAD_MSGPACK, f"{type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(body, dict):
        raise DecodeError(Reason.BAD_MESSAGE, f"expected a map, got {type(body).__name__}")
    # strict_map_key admits bytes keys beside str ones; field names are text only.
    if not all(isinstance(key, str) for key in body):
        raise DecodeError(Reason.BAD_MESSAGE, "field names must be strings")
    return body


def _message_type(body: dict[str, Any]) -> type[Message]:
    tag = body.get("t")
    cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise DecodeError(Reason.BAD_MESSAGE, f"unknown message type {str(tag)[:40]!r}")
    return cls


def _check_version(body: dict[str, Any]) -> int:
    version = body.get("v")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in version)
    ):
        raise DecodeError(Reason.BAD_MESSAGE, "v: expected [major, minor]")
    major, minor = version
    if major != SCHEMA_VERSION[0]:
        raise DecodeError(
            Reason.UNSUPPORTED_VERSION,
            f"schema version {major}.{minor} is not supported (this side speaks "
            f"{SCHEMA_VERSION[0]}.x)",
        )
    return int(minor)


def _fields(cls: type[Message], body: dict[str, Any], newer_minor: bool) -> dict[str, Any]:
    specs = field_specs(cls)
    unknown = set(body) - set(specs) - {"t", "v"}
    if unknown and not newer_minor:
        names = ", ".join(sorted(unknown))
        raise DecodeError(Reason.BAD_MESSAGE, f"unknown fields: {names}"[:200])
    fields: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in body:
            continue
        fields[name] = _from_wire(spec.kind, name, body[name])
    # Fields the dataclass defaults (flags, lists) may be absent though not nullable.
    missing = [name for name in needed_fields(cls) if name not in fields]
    if missing:
        raise DecodeError(Reason.BAD_MESSAGE, f"missing fields: {', '.join(missing)}")
    return fields


def _from_wire(kind: str, name: str, value: Any) -> Any:
    if kind in ("time", "seconds") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # other languages' encoders write whole seconds as integers
    if kind == "strs" and isinstance(value, list):
        return tuple(value)
    if kind == "counts" and isinstance(value, list):
        return tuple(_count(name, item) for item in value)
    return value


def _count(name: str, item: Any) -> PublishCount:
    if not isinstance(item, dict) or set(item) != {"component", "event", "result", "count"}:
        raise DecodeError(Reason.BAD_MESSAGE, f"{name}[]: expected component/event/result/count")
    try:
        return PublishCount(**item)
    except (TypeError, ValueError) as exc:
        raise DecodeError(Reason.BAD_MESSAGE, f"{name}[]: {exc}") from None
