"""Whose commands this agent obeys: the check made on every delivery and every spool load."""

from __future__ import annotations

from collections.abc import Mapping

from agent.config import SecurityConfig
from schemas.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SignatureError, Verifier

HEADERS = (SIGNATURE_HEADER, KEY_ID_HEADER)


class Signatures:
    """Signed by a trusted dispatcher key, or unsigned where that is allowed."""

    def __init__(self, security: SecurityConfig | None) -> None:
        keys = security.public_keys if security else ()
        self._verifier = Verifier(keys) if keys else None
        self._allow_unsigned = security is None or security.allow_unsigned

    @property
    def has_keys(self) -> bool:
        return self._verifier is not None

    def problem(self, body: bytes, headers: Mapping[str, object] | None) -> str | None:
        """Why ``body`` must not be obeyed, or None."""
        signed = bool(headers and SIGNATURE_HEADER in headers)
        if not signed and self._allow_unsigned:
            return None
        if self._verifier is None:
            return "signed, but this agent has no dispatcher public key"
        try:
            self._verifier.verify(body, as_text(headers))
        except SignatureError as exc:
            return str(exc)
        return None


def as_text(headers: Mapping[str, object] | None) -> dict[str, object]:
    """The signature headers as text, whatever AMQP type the sender gave them.

    An array or a table there is no signature; passed on as it is, an unhashable key id
    raised TypeError in the verifier, which killed the agent, and the redelivered message
    killed every restart too. As text it is refused like any other bad signature.
    """
    found = dict(headers or {})
    for name in HEADERS:
        value = found.get(name)
        if value is not None and not isinstance(value, (str, bytes)):
            found[name] = repr(value)
    return found


def kept(headers: Mapping[str, object] | None) -> dict[str, str] | None:
    """Only the signature headers, as text: what a spool entry keeps to be checked again."""
    found: dict[str, str] = {}
    for name, value in as_text(headers).items():
        if name in HEADERS and isinstance(value, (str, bytes)):
            found[name] = value if isinstance(value, str) else value.decode("ascii", "replace")
    return found or None
