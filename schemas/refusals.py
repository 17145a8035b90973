"""Reading a trigger request: its bytes become a valid request or one refusal reason.

The reasons are part of the contract (they are in the refusal reply, the metrics and the
test vectors' ``refusal``), so the mapping from a decode failure to a reason lives here,
beside the codec, rather than in the dispatcher.
"""

from __future__ import annotations

from schemas.codec import MAX_BODY, DecodeError, decode
from schemas.messages import Reason, RefusalReason, TriggerRequest

# Fields whose broken rule has a reason of its own; any other field is a bad request.
_FIELD_REASONS = {
    "event": RefusalReason.BAD_EVENT_NAME,
    "targets": RefusalReason.NO_TARGETS,
}
_DECODE_REASONS = {
    Reason.BAD_MSGPACK: RefusalReason.UNDECODABLE,
    Reason.UNSUPPORTED_VERSION: RefusalReason.UNSUPPORTED_VERSION,
}


class RequestRefused(Exception):
    """A trigger request was refused; ``reason`` is bounded, ``detail`` says what to fix."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def read_request(body: bytes) -> TriggerRequest:
    """Decode a trigger request or raise :class:`RequestRefused` with the reason."""
    if len(body) > MAX_BODY:
        raise RequestRefused(
            RefusalReason.TOO_LARGE, f"body of {len(body)} bytes exceeds {MAX_BODY}"
        )
    try:
        return decode(body, TriggerRequest)
    except DecodeError as exc:
        raise RequestRefused(refusal_reason(exc), exc.detail[:500]) from None


def refusal_reason(error: DecodeError) -> RefusalReason:
    if error.reason in _DECODE_REASONS:
        return _DECODE_REASONS[error.reason]
    return _FIELD_REASONS.get(error.field or "", RefusalReason.BAD_REQUEST)
