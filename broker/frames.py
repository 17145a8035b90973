"""The AMQP 0-9-1 frames a publisher writes and the confirms it reads, without pika's
generic frame objects.

pika builds a publish as three frame objects (method, content header, body), marshals
each through generic encoders and hands each to its transport as a buffer of its own,
which the transport sends with a ``send()`` each: three system calls and three TCP
segments per message. A storm publishes thousands of small messages in bursts, on a
machine whose CPU the broker needs, so :class:`broker.publisher.ConfirmingPublisher`
marshals a whole burst here and writes it at once. The bytes are exactly pika's
(tests/unit/test_frames.py compares them for every kind of message this project sends).

The broker answers about one ``basic.ack`` per persistent message, a fixed 21-byte
frame that pika decodes into objects and routes through its callback machinery;
:func:`confirm_at` reads one in place.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pika import data

FRAME_END = b"\xce"
_METHOD_FRAME = struct.Struct(">BHI")  # frame type 1, channel, payload size
_CONTENT_FRAME = struct.Struct(">BHI")
# basic.publish: class 60, method 40, then the deprecated ticket (0).
_PUBLISH = struct.pack(">HHH", 60, 40, 0)
# The content header's class (60), weight (0) and body size, then the property flags.
_HEADER = struct.Struct(">HHQH")
_TIMESTAMP = struct.Struct(">Q")
# A basic.ack (method 80) or basic.nack (120): frame type 1, channel, payload size 13,
# class 60, method, delivery tag, flags (multiple is bit 0), frame end.
_CONFIRM = struct.Struct(">BHIHHQBB")
CONFIRM_SIZE = _CONFIRM.size  # 21
_ACK, _NACK = 80, 120

# Property flags, in the order the properties are encoded (AMQP 0-9-1, 4.2.6.1).
_CONTENT_TYPE = 1 << 15
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_EXPIRATION = 1 << 8
_MESSAGE_ID = 1 << 7
_TIMESTAMP_FLAG = 1 << 6
_TYPE = 1 << 5
_USER_ID = 1 << 4
_APP_ID = 1 << 3
# Frame type (1 octet), channel (2), size (4) and the frame-end octet around a payload.
FRAME_OVERHEAD = 8


def short_string(value: str) -> bytes:
    """An AMQP short string: a length octet, then at most 255 octets of UTF-8."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"longer than an AMQP short string (255 bytes): {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def basic_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    message_id: str,
    message_type: str,
    app_id: str,
    timestamp: int,
    persistent: bool,
    expiration: str | None = None,
    user_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    content_type: str = "application/msgpack",
    mandatory: bool = True,
    body_max: int,
) -> tuple[bytes, int]:
    """The frames of one message and how many there are; ``body_max`` is the connection's
    largest body frame payload (its negotiated frame_max less :data:`FRAME_OVERHEAD`)."""
    method = b"".join(
        (
            _PUBLISH,
            short_string(exchange),
            short_string(routing_key),
            b"\x01" if mandatory else b"\x00",
        )
    )
    properties, flags = _properties(
        content_type,
        headers,
        persistent,
        expiration,
        message_id,
        timestamp,
        message_type,
        user_id,
        app_id,
    )
    header = _HEADER.pack(60, 0, len(body), flags) + properties
    pieces = [
        _METHOD_FRAME.pack(1, channel, len(method)),
        method,
        FRAME_END,
        _CONTENT_FRAME.pack(2, channel, len(header)),
        header,
        FRAME_END,
    ]
    for start in range(0, len(body), body_max):
        chunk = body[start : start + body_max]
        pieces += (_CONTENT_FRAME.pack(3, channel, len(chunk)), chunk, FRAME_END)
    return b"".join(pieces), len(pieces) // 3


def _properties(
    content_type: str,
    headers: Mapping[str, Any] | None,
    persistent: bool,
    expiration: str | None,
    message_id: str,
    timestamp: int,
    message_type: str,
    user_id: str | None,
    app_id: str,
) -> tuple[bytes, int]:
    flags = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID | _TIMESTAMP_FLAG | _TYPE | _APP_ID
    pieces = [short_string(content_type)]
    if headers:  # as pika: an empty table is no table
        flags |= _HEADERS
        data.encode_table(pieces, dict(headers))
    pieces.append(b"\x02" if persistent else b"\x01")
    if expiration is not None:
        flags |= _EXPIRATION
        pieces.append(short_string(expiration))
    pieces += (short_string(message_id), _TIMESTAMP.pack(timestamp), short_string(message_type))
    if user_id is not None:
        flags |= _USER_ID
        pieces.append(short_string(user_id))
    pieces.append(short_string(app_id))
    return b"".join(pieces), flags


def confirm_at(buffer: bytes, offset: int) -> tuple[int, int, bool, bool] | None:
    """The ``basic.ack`` or ``basic.nack`` frame at ``offset``, as (channel, delivery
    tag, multiple, nacked); None when another frame starts there, or too little of one
    has arrived."""
    if len(buffer) - offset < CONFIRM_SIZE or buffer[offset] != 1:
        return None
    _type, channel, size, cls, method, tag, flags, end = _CONFIRM.unpack_from(buffer, offset)
    if size != 13 or cls != 60 or end != 0xCE or method not in (_ACK, _NACK):
        return None
    return channel, tag, bool(flags & 1), method == _NACK
