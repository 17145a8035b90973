"""The setevnt wire contract: component catalog, tool syntax, messages and their codec.

Nothing in this package does I/O; it is shared by the dispatcher, the agent and any
service that publishes requests.
"""

from schemas.catalog import DEFAULT_CATALOG, Catalog, Component, ComponentEvent
from schemas.codec import DecodeError, decode, encode
from schemas.messages import (
    SCHEMA_VERSION,
    Ack,
    AckStatus,
    Command,
    Heartbeat,
    PublishReport,
)
from schemas.syntax import Invocation, UsageError, parse_invocation

__all__ = [
    "DEFAULT_CATALOG",
    "SCHEMA_VERSION",
    "Ack",
    "AckStatus",
    "Catalog",
    "Command",
    "Component",
    "ComponentEvent",
    "DecodeError",
    "Heartbeat",
    "Invocation",
    "PublishReport",
    "UsageError",
    "decode",
    "encode",
    "parse_invocation",
]
