"""Command signatures: Ed25519 over the exact msgpack body, carried in an AMQP header.

Signing the body bytes as published (rather than a re-encoding of the fields) means a
verifier in any language needs no canonical form: it checks the bytes it received.
Headers:

    setevnt-signature   base64 of the 64-byte Ed25519 signature of the body
    setevnt-key-id      first 16 hex digits of SHA-256 of the 32-byte public key

The dispatcher holds the private key; agents hold only public keys (several, so keys can
be rotated), so a compromised client cannot forge commands for others. PyNaCl (libsodium)
rather than ``cryptography``: on an agent its import costs ~1.3 MB of memory instead of
~8.5 MB, and the signatures are the same standard Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

SIGNATURE_HEADER = "setevnt-signature"
KEY_ID_HEADER = "setevnt-key-id"


class SignatureError(ValueError):
    """A command's signature is missing, malformed, from an unknown key, or wrong."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{what}: expected 32 bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class Signer:
    """Signs command bodies with the dispatcher's private key."""

    _key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Signer:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_private(cls, text: str) -> Signer:
        return cls(nacl.signing.SigningKey(_decode_key(text, "signing key")))

    def private_text(self) -> str:
        return base64.b64encode(bytes(self._key)).decode()

    def public_text(self) -> str:
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        signature = self._key.sign(body).signature
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            KEY_ID_HEADER: key_id(bytes(self._key.verify_key)),
        }


class Verifier:
    """Checks command signatures against a set of trusted public keys."""

    def __init__(self, public_keys: Iterable[str]) -> None:
        self._keys: dict[str, nacl.signing.VerifyKey] = {}
        for text in public_keys:
            raw = _decode_key(text, "dispatcher public key")
            self._keys[key_id(raw)] = nacl.signing.VerifyKey(raw)
        if not self._keys:
            raise ValueError("no dispatcher public key configured")

    def verify(self, body: bytes, headers: Mapping[str, object] | None) -> None:
        headers = headers or {}
        signature_text = headers.get(SIGNATURE_HEADER)
        if signature_text is None:
            raise SignatureError("unsigned command")
        if isinstance(signature_text, bytes):
            signature_text = signature_text.decode("ascii", "replace")
        if not isinstance(signature_text, str):
            raise SignatureError(f"signature header is a {type(signature_text).__name__}")
        try:
            signature = base64.b64decode(str(signature_text), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature header is not base64") from None
        wanted = headers.get(KEY_ID_HEADER)
        if isinstance(wanted, bytes):
            wanted = wanted.decode("ascii", "replace")
        if wanted is not None and not isinstance(wanted, str):  # headers may hold arrays, tables
            raise SignatureError(f"key id header is a {type(wanted).__name__}, not text")
        candidates = [self._keys[wanted]] if wanted in self._keys else []
        if not candidates:
            raise SignatureError(f"signed with unknown key {str(wanted)[:32]!r}")
        try:
            candidates[0].verify(body, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise SignatureError("bad signature: the command was altered or forged") from None
