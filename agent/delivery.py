"""A delivery as the agent's logic sees it: the broker layer builds one per message.

Its own module so that the handler and the deferral spool, which both take deliveries,
need not import each other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    message_id: str | None
    received_at: float  # wall clock, reported in the ack
    received_mono: float  # monotonic, for the durations
    headers: Mapping[str, object] | None = None  # AMQP headers: the signature travels here

    @classmethod
    def received_now(
        cls, body: bytes, message_id: str | None, headers: Mapping[str, object] | None
    ) -> Delivery:
        """A message the broker layer just handed over (the daemon's and the simulator's)."""
        return cls(body, message_id, time.time(), time.monotonic(), headers)
