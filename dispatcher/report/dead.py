"""``setevnt.dead``: why each message is in it.

Two kinds of message end up there:

- **Commands** a client's queue dead-lettered. The broker's ``x-death`` header says
  ``expired`` (its time to live ran out unread), ``rejected`` (the agent refused it) or
  ``maxlen``; the agent's own reason (``bad-signature``, ``clock-skew``, ...) is in its
  ack, which the ledger keeps under the command id, the message's id.
- **Requests** the intake refused. The intake publishes them here itself, with the
  refusal's reason and detail and the requester in ``x-setevnt-*`` headers, then acks
  the original: a plain reject would leave only ``rejected`` in ``x-death``. A request's
  body is kept up to 64 KiB (``dead_letters.MAX_BODY``). Those headers are believed only on a
  message that no queue dead-lettered (no ``x-death``): services cannot publish here, while a
  request they sent may carry any header.

``setevnt-dispatcher dead`` (:mod:`dispatcher.cli.dead`) reads the queue without taking
anything off it (:mod:`broker.peek`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from broker import topology
from broker.peek import Peeked
from dispatcher.report import results, tables
from dispatcher.service.dead_letters import (
    DETAIL,
    REFUSAL,
    REFUSED_AT,
    REQUESTER,
    TEXT_MAX,
)
from dispatcher.store.ledger import ClientResult, Ledger
from schemas.rules import ID_PATTERN

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Death:
    """The broker's latest ``x-death`` entry: why and from where it dead-lettered it."""

    reason: str | None
    queue: str | None
    at: float | None
    count: int | None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str | None
    detail: str | None
    requester: str | None
    at: float | None


@dataclass(frozen=True, slots=True)
class DeadMessage:
    position: int
    message_id: str | None
    message_type: str | None
    size: int
    death: Death | None
    refusal: Refusal | None
    command: ClientResult | None  # the ledger's row for a dead-lettered command


def explain(position: int, message: Peeked, ledger: Ledger | None, now: float) -> DeadMessage:
    headers = message.headers
    death = _death(headers.get("x-death"))
    message_id = _text(message.message_id, 255)
    command = None
    if ledger is not None and death is not None and message_id and ID_PATTERN.fullmatch(message_id):
        row = ledger.result(message_id, now)
        if row is not None and death.queue == _client_queue(row.client_id):
            command = row
    refusal = None
    if "x-death" not in headers and REFUSAL in headers:
        refusal = Refusal(
            _text(headers.get(REFUSAL), 64),
            _text(headers.get(DETAIL), TEXT_MAX),
            _text(headers.get(REQUESTER), 64),
            _time(headers.get(REFUSED_AT)),
        )
    return DeadMessage(
        position, message_id, _text(message.message_type, 64), message.size, death, refusal, command
    )


def _death(value: object) -> Death | None:
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return None
    entry = value[0]  # the broker keeps the latest first
    count = entry.get("count")
    return Death(
        _text(entry.get("reason"), 64),
        _text(entry.get("queue"), 255),
        _time(entry.get("time")),
        count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def _client_queue(client_id: str) -> str | None:
    try:
        return topology.client_queue(client_id)
    except ValueError:
        return None


def _text(value: object, limit: int) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[:limit] if isinstance(value, str) else None


def _time(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**40:
        return float(value)
    return None


def as_json(message: DeadMessage) -> dict[str, Any]:
    command = message.command
    return {
        "position": message.position,
        "message_id": message.message_id,
        "type": message.message_type,
        "bytes": message.size,
        "death": asdict(message.death) if message.death else None,
        "refusal": asdict(message.refusal) if message.refusal else None,
        "command": results.as_json(command) if command is not None else None,
    }


def table(messages: list[DeadMessage], width: int | None = None) -> list[str]:
    headers = ("#", "WHEN (UTC)", "WHY", "FROM", "MESSAGE", "REASON", "DETAIL")
    return tables.layout(headers, [_cells(m) for m in messages], width)


def _cells(message: DeadMessage) -> tuple[str, ...]:
    death, refusal, command = message.death, message.refusal, message.command
    why: str | None
    source: str | None
    if refusal is not None:
        why, source = "refused", topology.REQUEST_QUEUE
        what = f"request from {tables.one_line(refusal.requester, 64)}"
        reason, detail, at = refusal.reason, refusal.detail, refusal.at
    else:
        why = death.reason if death is not None else None
        source = death.queue if death is not None else None
        at = death.at if death is not None else None
        what = f"{message.message_type or 'message'} {message.message_id or '-'}"
        reason, detail = _ledger_says(command)
    return (
        str(message.position),
        _when(at),
        tables.one_line(why, 16),
        tables.one_line(source, 64),
        tables.one_line(what, 80),
        tables.one_line(reason, 24),
        tables.one_line(detail, results.DETAIL_SHOWN),
    )


def _ledger_says(command: ClientResult | None) -> tuple[str | None, str | None]:
    if command is None:
        return None, "no command of that queue in the ledger"
    if command.reason is None:
        return command.status, results.why(command)
    return command.reason, command.detail


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at is not None else "-"
