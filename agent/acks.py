"""The one place an agent builds an ack: the handler and the deferral spool both answer."""

from __future__ import annotations

from typing import Any

from agent import __version__
from schemas.messages import Ack, AckStatus, Command, Reason

DETAIL_LIMIT = 1024  # what the contract lets a detail carry


def make_ack(
    client_id: str,
    command_id: str,
    command: Command | None,
    status: AckStatus,
    received_at: float,
    *,
    reason: Reason | None = None,
    detail: str | None = None,
    **fields: Any,
) -> Ack:
    """An ack for ``command`` (None: it could not be read); ``fields`` are the timings etc."""
    return Ack(
        command_id=command_id,
        client_id=client_id,
        status=status.value,
        received_at=received_at,
        agent_version=__version__,
        component=command.component if command else None,
        event=command.event if command else None,
        issued_at=command.issued_at if command else None,
        storm_id=command.storm_id if command else None,
        reason=reason.value if reason else None,
        detail=None if detail is None else detail[:DETAIL_LIMIT],
        **fields,
    )
