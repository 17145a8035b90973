"""What an agent sends, built in one place each: acks (the handler and the deferral
spool both answer) and heartbeats (the daemon and the fleet simulator both send them)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from agent import __version__
from agent.config import AgentConfig
from schemas.messages import Ack, AckStatus, Command, Heartbeat, Kind, Reason

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


def make_heartbeat(
    config: AgentConfig,
    kind: Kind,
    copylist_version: str | None,
    components: Mapping[str, str] | None = None,
) -> Heartbeat:
    """A heartbeat of ``kind`` for the client ``config`` describes, sent now."""
    return Heartbeat(
        client_id=config.client_id,
        kind=kind.value,
        sent_at=time.time(),
        platform=config.platform,
        agent_version=__version__,
        groups=config.groups,
        components=dict(components or {}),
        copylist_version=copylist_version,
    )
