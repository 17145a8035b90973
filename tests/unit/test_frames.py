"""broker.frames marshals a publish exactly as pika would, frame for frame."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import frame, spec

from broker import frames

# Short strings as AMQP allows them: at most 255 bytes once UTF-8 encoded.
_short = st.text(max_size=80).filter(lambda s: len(s.encode()) <= 255)
_headers = st.none() | st.dictionaries(
    st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255),
    st.text(max_size=120),
    max_size=4,
)


def _pika(channel: int, body_max: int, body: bytes, **fields: Any) -> tuple[bytes, int]:
    """What pika's Channel.basic_publish hands its transport, joined."""
    properties = pika.BasicProperties(
        headers=dict(fields["headers"]) if fields["headers"] else None,
        message_id=fields["message_id"],
        type=fields["message_type"],
        content_type="application/msgpack",
        delivery_mode=2 if fields["persistent"] else 1,
        expiration=fields["expiration"],
        timestamp=fields["timestamp"],
        app_id=fields["app_id"],
        user_id=fields["user_id"],
    )
    publish = spec.Basic.Publish(
        exchange=fields["exchange"], routing_key=fields["routing_key"], mandatory=True
    )
    marshalled = [
        frame.Method(channel, publish).marshal(),
        frame.Header(channel, len(body), properties).marshal(),
    ]
    for start in range(0, len(body), body_max):
        marshalled.append(frame.Body(channel, body[start : start + body_max]).marshal())
    return b"".join(marshalled), len(marshalled)


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 2047),
    exchange=_short,
    routing_key=_short,
    body=st.binary(max_size=3000),
    body_max=st.sampled_from([1, 7, 200, 4088, 131064]),
    message_id=_short,
    message_type=_short,
    app_id=_short,
    timestamp=st.integers(0, 2**63),
    persistent=st.booleans(),
    expiration=st.none() | st.integers(1, 10**10).map(str),
    user_id=st.none() | _short,
    headers=_headers,
)
def test_the_bytes_are_pikas(channel: int, body_max: int, body: bytes, **fields: Any) -> None:
    ours = frames.basic_publish(
        channel,
        fields["exchange"],
        fields["routing_key"],
        body,
        message_id=fields["message_id"],
        message_type=fields["message_type"],
        app_id=fields["app_id"],
        timestamp=fields["timestamp"],
        persistent=fields["persistent"],
        expiration=fields["expiration"],
        user_id=fields["user_id"],
        headers=fields["headers"],
        body_max=body_max,
    )
    assert ours == _pika(channel, body_max, body, **fields)


def test_an_empty_body_has_no_body_frame() -> None:
    data, count = frames.basic_publish(
        1,
        "",
        "q",
        b"",
        message_id="m",
        message_type="t",
        app_id="a",
        timestamp=0,
        persistent=True,
        body_max=4088,
    )
    assert count == 2
    assert data.count(frames.FRAME_END) >= 2 and data.endswith(frames.FRAME_END)


@pytest.mark.parametrize("field", ["routing_key", "message_id", "app_id"])
def test_a_string_too_long_for_amqp_is_refused(field: str) -> None:
    values: dict[str, Any] = {"routing_key": "q", "message_id": "m", "app_id": "a"}
    values[field] = "é" * 128  # 256 bytes of UTF-8
    with pytest.raises(ValueError, match="255 bytes"):
        frames.basic_publish(
            1,
            "",
            values["routing_key"],
            b"x",
            message_id=values["message_id"],
            message_type="t",
            app_id=values["app_id"],
            timestamp=0,
            persistent=True,
            body_max=4088,
        )


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(0, 65535),
    tag=st.integers(0, 2**64 - 1),
    multiple=st.booleans(),
    nack=st.booleans(),
    requeue=st.booleans(),
    before=st.binary(max_size=40),
)
def test_a_confirm_is_read_as_pika_writes_it(
    channel: int, tag: int, multiple: bool, nack: bool, requeue: bool, before: bytes
) -> None:
    method = (
        spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue)
        if nack
        else spec.Basic.Ack(delivery_tag=tag, multiple=multiple)
    )
    data = before + frame.Method(channel, method).marshal()
    assert frames.confirm_at(data, len(before)) == (channel, tag, multiple, nack)
    assert frames.confirm_at(data[:-1], len(before)) is None  # not all of it arrived yet


@pytest.mark.parametrize(
    "other",
    [
        frame.Method(1, spec.Basic.Return(312, "NO_ROUTE", "", "q")).marshal(),
        frame.Method(1, spec.Basic.Reject(5)).marshal(),
        frame.Method(1, spec.Channel.Close(406, "x", 0, 0)).marshal(),
        frame.Heartbeat().marshal() + b"\x00" * 20,
        frame.Body(1, b"\x00\x3c\x00\x50" + b"\x00" * 9).marshal(),  # a body that looks like one
        frame.Header(1, 13, pika.BasicProperties()).marshal() + b"\x00" * 20,
    ],
)
def test_no_other_frame_is_taken_for_a_confirm(other: bytes) -> None:
    assert frames.confirm_at(other, 0) is None
