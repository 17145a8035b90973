"""The one codec: messages to msgpack bytes and back, validating fully on the way in."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import msgpack

from schemas.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Command,
    Message,
    PublishCount,
    Reason,
    check_expiry,
    check_rule,
    field_rules,
)

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
    body: dict[str, Any] = {"t": message.WIRE_TYPE, "v": list(SCHEMA_VERSION)}
    for name in message.SPEC:
        value = getattr(message, name)
        if value is None:
            continue  # absent optional fields are left out, not sent as nil
        if isinstance(value, tuple) and value and isinstance(value[0], PublishCount):
            value = [dataclasses.asdict(item) for item in value]
        body[name] = value
    return body


class CommandEncoder:
    """Encodes many commands alike but for their ids, clients and times: a storm's.

    The same bytes as :func:`encode` of the same :class:`Command`, for a fraction of the
    cost (a storm builds one command per client, on the thread that publishes them): the
    fields all commands share are validated once, here, and those that differ are
    checked per command by the same rules.
    """

    _VARYING = ("command_id", "client_id", "issued_at", "expires_at", "not_before")

    def __init__(
        self,
        *,
        component: str,
        event: str,
        silent: bool,
        requested_by: str,
        storm_id: str | None = None,
        force: bool = False,
    ) -> None:
        shared = _wire_fields(
            Command(  # the varying fields are placeholders: each command sets its own
                command_id="0",
                client_id="0",
                component=component,
                event=event,
                silent=silent,
                issued_at=0.0,
                expires_at=0.0,
                requested_by=requested_by,
                storm_id=storm_id,
                force=force,
            )
        )
        # In wire order, as encode() writes them (msgpack keeps a map's order).
        self._base = {"t": shared["t"], "v": shared["v"]}
        for name in Command.SPEC:
            if name in self._VARYING:
                self._base[name] = None
            elif name in shared:
                self._base[name] = shared[name]
        self._rules = field_rules(Command, self._VARYING)
        # One packer for every command: msgpack.packb() would build one per call.
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(
        self,
        command_id: str,
        client_id: str,
        issued_at: float,
        expires_at: float,
        not_before: float | None = None,
    ) -> bytes:
        """The body of one command; raises ValueError where Command() would."""
        values = (command_id, client_id, issued_at, expires_at, not_before)
        for rule, value in zip(self._rules, values, strict=True):
            if not rule[2](value):  # the rule's quick acceptance; check_rule() says why not
                check_rule(rule, value)
        check_expiry(issued_at, expires_at)
        body = self._base.copy()
        body["command_id"], body["client_id"] = command_id, client_id
        body["issued_at"], body["expires_at"] = issued_at, expires_at
        if not_before is None:
            del body["not_before"]  # left out, as encode() leaves out absent fields
        else:
            body["not_before"] = not_before
        packed: bytes = self._packer.pack(body)
        return packed


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
    unknown = set(body) - set(cls.SPEC) - {"t", "v"}
    if unknown and not newer_minor:
        names = ", ".join(sorted(unknown))
        raise DecodeError(Reason.BAD_MESSAGE, f"unknown fields: {names}"[:200])
    fields: dict[str, Any] = {}
    for name, spec in cls.SPEC.items():
        if name not in body:
            continue
        fields[name] = _from_wire(spec.kind, name, body[name])
    missing = [n for n, s in cls.SPEC.items() if s.required and n not in fields]
    # Required fields that the dataclass defaults (flags, lists) may still be absent.
    missing = [n for n in missing if _no_default(cls, n)]
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


def _no_default(cls: type[Message], name: str) -> bool:
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return True
