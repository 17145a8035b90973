"""The wire rules of message fields: what each field may hold, checked fast.

A field's rule (:class:`Spec`) is attached to the dataclass field itself
(``field(metadata=wire(spec))``); this module derives each message class's rules from its
fields once, and checks values against them: a quick test for the usual values first,
the full check (with a :class:`FieldError` naming the field) only when that fails.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,31}$")
# COMPONENT_EVENT as the original tool writes it: component and event names never hold "_".
EVENT_NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,31}_[A-Z][A-Z0-9]{0,31}$")
STATUS_PATTERN = re.compile(r"^[a-z][a-z-]{0,31}$")
TEXT_MAX = 1024
LATEST_TIME = 32503680000.0  # year 3000: a later timestamp is in ms, not s
OUTPUT_MAX = 2048


@dataclass(frozen=True, slots=True)
class Spec:
    """How one field looks on the wire."""

    kind: str  # str | bool | time | seconds | int | strs | strmap | idmap | counts | tally
    required: bool = True
    max_len: int = 64
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    max_items: int = 32  # strs and idmap only
    item: type | None = None  # counts only: the class of its entries


class FieldError(ValueError):
    """A field breaks its rule; ``field`` names it so a refusal can say which rule broke.

    Rules that span fields name a pseudo-field (a trigger request's ``targets``).
    """

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


_WIRE = "setevnt.wire"  # the field metadata key that holds a field's Spec


def wire(spec: Spec) -> Mapping[str, Spec]:
    """Field metadata giving a message field its wire rule: ``field(metadata=wire(spec))``."""
    return MappingProxyType({_WIRE: spec})


def choice(values: Iterable[str], required: bool = True) -> Mapping[str, Spec]:
    """The metadata of a field that holds one of ``values``."""
    return wire(Spec("str", required=required, choices=tuple(str(v) for v in values)))


def check(spec: Spec, name: str, value: Any) -> None:
    """Raise ValueError when ``value`` does not fit ``spec``."""
    if value is None:
        if spec.required:
            raise FieldError(name, f"{name}: required")
        return
    checker = _CHECKERS[spec.kind]
    try:
        checker(spec, name, value)
    except ValueError as exc:
        raise FieldError(name, str(exc)) from None


def _check_str(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    if len(value) > spec.max_len:
        raise ValueError(f"{name}: longer than {spec.max_len} characters")
    # fullmatch: with match(), "$" would also accept a trailing newline ("PC042\n").
    if spec.pattern is not None and not spec.pattern.fullmatch(value):
        raise ValueError(f"{name}: {value[:80]!r} does not match {spec.pattern.pattern}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")


def _check_bool(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a boolean, got {type(value).__name__}")


def _check_number(spec: Spec, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite, non-negative number")
    if spec.kind == "time" and value > LATEST_TIME:  # a unit mix-up (ms vs s)
        raise ValueError(f"{name}: timestamp {value} is not in seconds since the epoch")


def _check_int(spec: Spec, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__}")
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{name}: out of range")


def _check_strs(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > spec.max_items:
        raise ValueError(f"{name}: expected a list of at most {spec.max_items} names")
    for item in value:
        _check_str(Spec("str", pattern=ID_PATTERN), f"{name}[]", item)


def _check_strmap(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, dict) or len(value) > 64:
        raise ValueError(f"{name}: expected a map of at most 64 entries")
    for key, item in value.items():
        _check_str(Spec("str", pattern=NAME_PATTERN, max_len=32), f"{name} key", key)
        _check_str(Spec("str", max_len=64), f"{name}[{key}]", item)


def _check_idmap(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, dict) or len(value) > spec.max_items:
        raise ValueError(f"{name}: expected a map of at most {spec.max_items} ids")
    for key, item in value.items():
        _check_str(Spec("str", pattern=ID_PATTERN), f"{name} key", key)
        _check_str(Spec("str", pattern=ID_PATTERN), f"{name}[{key}]", item)


def _check_counts(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > 256:
        raise ValueError(f"{name}: expected a list of at most 256 counts")
    for item in value:
        if spec.item is None or not isinstance(item, spec.item):
            raise ValueError(f"{name}[]: expected a count entry")


def _check_tally(spec: Spec, name: str, value: Any) -> None:
    if not isinstance(value, dict) or len(value) > 32:
        raise ValueError(f"{name}: expected a map of at most 32 counts")
    for key, item in value.items():
        _check_str(Spec("str", pattern=STATUS_PATTERN, max_len=32), f"{name} key", key)
        _check_int(Spec("int"), f"{name}[{key}]", item)
        if item < 0:
            raise ValueError(f"{name}[{key}]: must not be negative")


_CHECKERS = {
    "str": _check_str,
    "bool": _check_bool,
    "time": _check_number,
    "seconds": _check_number,
    "int": _check_int,
    "strs": _check_strs,
    "strmap": _check_strmap,
    "idmap": _check_idmap,
    "counts": _check_counts,
    "tally": _check_tally,
}


Accept = Callable[[Any], bool]
FieldRule = tuple[str, Spec, Accept]  # a field's name, its spec, its fast test


def _accept(spec: Spec) -> Accept:
    """A fast test that passes the usual valid values of ``spec``.

    Every message is validated when it is built and when it is decoded, and a storm
    builds, and a fleet decodes, one command per client. A value this test does not pass
    goes through :func:`check`, which has the final word and says which rule broke.
    """
    accept = _accept_present(spec)
    if spec.required:
        return accept
    return lambda value: value is None or accept(value)


def _accept_present(spec: Spec) -> Accept:
    if spec.kind == "str":
        return _accept_str(spec)
    if spec.kind == "bool":
        return lambda value: value is True or value is False
    if spec.kind in ("time", "seconds"):
        # NaN and infinity fail the comparison, so check() refuses them.
        top = LATEST_TIME if spec.kind == "time" else math.inf
        return lambda value: value.__class__ is float and 0.0 <= value < top
    return lambda value: False  # the rarer kinds: check() does it all


def _accept_str(spec: Spec) -> Accept:
    limit, pattern = spec.max_len, spec.pattern
    if spec.choices:
        # The choices that also fit the length and (no spec has one) the pattern.
        choices = frozenset(c for c in spec.choices if len(c) <= limit and pattern is None)
        return lambda value: isinstance(value, str) and value in choices
    if pattern is not None:
        fullmatch = pattern.fullmatch
        return lambda value: (
            isinstance(value, str) and len(value) <= limit and fullmatch(value) is not None
        )
    return lambda value: isinstance(value, str) and len(value) <= limit


@dataclass(frozen=True, slots=True)
class _Fields:
    """What a message class's fields say about its wire form, derived once per class."""

    specs: Mapping[str, Spec]  # in declared order, which is the order on the wire
    rules: tuple[FieldRule, ...]
    needed: tuple[str, ...]  # what a body must carry: not nullable and no default


_FIELDS: dict[type, _Fields] = {}


def _fields_of(cls: type) -> _Fields:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = _derive(cls)
    return found


def _derive(cls: type) -> _Fields:
    specs: dict[str, Spec] = {}
    needed: list[str] = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_WIRE)
        if not isinstance(spec, Spec):
            raise TypeError(f"{cls.__name__}.{f.name} has no wire rule: field(metadata=wire(...))")
        specs[f.name] = spec
        defaulted = f.default is not dataclasses.MISSING
        if spec.required and not defaulted and f.default_factory is dataclasses.MISSING:
            needed.append(f.name)
    rules = tuple((name, spec, _accept(spec)) for name, spec in specs.items())
    return _Fields(MappingProxyType(specs), rules, tuple(needed))


def field_specs(cls: type) -> Mapping[str, Spec]:
    """Each field's wire rule by name, in wire order, as the fields of ``cls`` declare them."""
    return _fields_of(cls).specs


def needed_fields(cls: type) -> tuple[str, ...]:
    """The fields a body of ``cls`` must carry: neither nullable nor defaulted."""
    return _fields_of(cls).needed


def field_rules(cls: type, names: Sequence[str]) -> list[FieldRule]:
    """The rules of some fields of ``cls``: for code that checks them one by one."""
    rules = {rule[0]: rule for rule in _fields_of(cls).rules}
    return [rules[name] for name in names]


def check_rule(rule: FieldRule, value: Any) -> None:
    """Raise :class:`FieldError` when ``value`` breaks ``rule``."""
    name, spec, accept = rule
    if not accept(value):
        check(spec, name, value)


def rules_of(cls: type) -> tuple[FieldRule, ...]:
    """Every field's rule of ``cls``, in wire order (derived on first use)."""
    found = _FIELDS.get(cls)
    return (found or _fields_of(cls)).rules
