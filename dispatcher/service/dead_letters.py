"""Refused trigger requests into ``setevnt.dead``, with why in ``x-setevnt-*`` headers.

A plain reject would leave only ``rejected`` in ``x-death``; the intake publishes the
request there itself with the refusal's reason, detail and requester, then acks it.
"""

from __future__ import annotations

import logging
import time

from broker import topology
from broker.errors import BrokerError
from broker.session import Incoming, Session
from schemas.messages import TriggerRequest
from schemas.refusals import RequestRefused

log = logging.getLogger(__name__)

REFUSAL = "x-setevnt-refusal"
DETAIL = "x-setevnt-detail"
REQUESTER = "x-setevnt-requester"
REFUSED_AT = "x-setevnt-refused-at"
BODY_BYTES = "x-setevnt-body-bytes"  # the request's size, when its body was cut
MAX_BODY = 64 * 1024
TEXT_MAX = 1024


def refusal_headers(refused: RequestRefused, requester: object, size: int) -> dict[str, object]:
    headers: dict[str, object] = {
        REFUSAL: refused.reason.value,
        DETAIL: refused.detail[:TEXT_MAX],
        REFUSED_AT: int(time.time()),
    }
    if isinstance(requester, str):
        headers[REQUESTER] = requester
    if size > MAX_BODY:
        headers[BODY_BYTES] = size
    return headers


def dead_letter_refused(session: Session, incoming: Incoming, refused: RequestRefused) -> None:
    """Put a refused request in ``setevnt.dead`` with why, then ack it; if that publish
    fails, reject it into the dead letters without its reason rather than lose it."""
    message_id = incoming.message_id if isinstance(incoming.message_id, str) else None
    try:
        session.publish(
            topology.DEAD_EXCHANGE,
            "",
            incoming.body[:MAX_BODY],
            message_type=TriggerRequest.WIRE_TYPE,
            message_id=message_id,
            headers=refusal_headers(refused, incoming.user_id, len(incoming.body)),
        )
    except BrokerError as exc:
        log.warning("refused request dead-lettered without its reason: %s", exc)
        session.settle(incoming.delivery_tag, dead_letter=True)
        return
    session.settle(incoming.delivery_tag)
