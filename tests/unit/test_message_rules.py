"""The fast acceptance test in front of every field check never lets through what
:func:`schemas.messages.check` refuses, and passes the usual valid values itself."""

from __future__ import annotations

import dataclasses
import math
from enum import StrEnum
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.messages import MESSAGE_TYPES, Ack, AckStatus, Heartbeat, Message, PublishCount
from schemas.rules import LATEST_TIME, Spec, _accept, check, field_specs, needed_fields

FIELDS = [
    pytest.param(spec, id=f"{cls.WIRE_TYPE}.{name}")
    for cls in MESSAGE_TYPES.values()
    for name, spec in field_specs(cls).items()
]

COMMAND_SPECS = field_specs(MESSAGE_TYPES["command"])
ACK_SPECS = field_specs(MESSAGE_TYPES["ack"])


class Shade(StrEnum):
    PC = "PC042"


EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**31,
    0.0,
    -0.0,
    -1e-9,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    LATEST_TIME,
    LATEST_TIME + 1,
    1e300,
    "",
    "PC042",
    "PC042\n",
    " PC042",
    "pc042",
    "CCIM32",
    "ccim32",
    "A" * 32,
    "A" * 33,
    "a" * 64,
    "a" * 65,
    "x" * 1025,
    "done",
    "deferred",
    "Done",
    AckStatus.DONE,
    Shade.PC,
    b"PC042",
    ("PC042",),
    ["PC042"],
    {"A": "b"},
    {"a": 1},
    object(),
]


def _check_passes(spec: Spec, value: Any) -> bool:
    try:
        check(spec, "field", value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("spec", FIELDS)
def test_accepts_nothing_that_check_refuses(spec: Spec) -> None:
    accept = _accept(spec)
    for value in EDGES:
        if accept(value):
            assert _check_passes(spec, value), value


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=80),
        st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,70}\Z"),
        st.from_regex(r"\A[A-Z][A-Z0-9]{0,34}\Z"),
        st.sampled_from([s.value for s in AckStatus] + ["", "maybe"]),
    )
)
def test_accepts_nothing_that_check_refuses_generated(value: Any) -> None:
    for param in FIELDS:
        (spec,) = param.values
        if _accept(spec)(value):
            assert _check_passes(spec, value), (param.id, value)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (Spec("str", pattern=COMMAND_SPECS["client_id"].pattern), "PC042"),
        (COMMAND_SPECS["component"], "CCIM32"),
        (ACK_SPECS["status"], "done"),
        (ACK_SPECS["status"], AckStatus.DEFERRED),
        (COMMAND_SPECS["silent"], False),
        (COMMAND_SPECS["issued_at"], 1_790_000_000.25),
        (COMMAND_SPECS["not_before"], None),
    ],
)
def test_usual_values_take_the_fast_path(spec: Spec, value: Any) -> None:
    assert _accept(spec)(value)


@pytest.mark.parametrize("cls", [*MESSAGE_TYPES.values(), PublishCount], ids=lambda c: c.__name__)
def test_every_field_carries_its_wire_rule_in_declared_order(cls: type) -> None:
    assert list(field_specs(cls)) == [f.name for f in dataclasses.fields(cls)]
    assert all(spec.required for spec in map(field_specs(cls).__getitem__, needed_fields(cls)))


def test_a_field_without_a_wire_rule_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Loose(Message):
        WIRE_TYPE: ClassVar[str] = "loose"
        name: str

    with pytest.raises(TypeError, match=r"Loose\.name has no wire rule"):
        field_specs(Loose)


def test_required_fields_stay_positional_and_optional_ones_are_named() -> None:
    ack = Ack("c1", "PC042", "done", 1_700_000_001.5, "1.0.0", component="CCIM32")
    assert (ack.received_at, ack.agent_version, ack.component) == (
        1_700_000_001.5,
        "1.0.0",
        "CCIM32",
    )
    with pytest.raises(TypeError):
        Ack("c1", "PC042", "done", 1_700_000_001.5, "1.0.0", "CCIM32")  # type: ignore[call-arg]
    beat = Heartbeat("PC042", "hello", 1_700_000_000.75, "nt", "1.0.0", groups=("lab-7",))
    assert (beat.agent_version, beat.groups) == ("1.0.0", ("lab-7",))
