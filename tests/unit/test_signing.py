"""Command signatures: what verifies and everything that must not."""

from __future__ import annotations

import base64

import pytest

from schemas.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SignatureError, Signer, Verifier

BODY = b"\x85\xa1t\xa7command"


def test_signed_body_verifies() -> None:
    signer = Signer.generate()
    Verifier([signer.public_text()]).verify(BODY, signer.headers(BODY))


def test_headers_as_bytes_verify_too() -> None:
    signer = Signer.generate()
    headers = {k: v.encode() for k, v in signer.headers(BODY).items()}
    Verifier([signer.public_text()]).verify(BODY, headers)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body, h: (body + b"x", h), "bad signature"),
        (lambda body, h: (body[:-1] + b"Z", h), "bad signature"),
        (lambda body, h: (body, {}), "unsigned"),
        (lambda body, h: (body, None), "unsigned"),
        (lambda body, h: (body, {**h, SIGNATURE_HEADER: "***"}), "not base64"),
        (
            lambda body, h: (body, {**h, SIGNATURE_HEADER: base64.b64encode(b"x" * 64).decode()}),
            "bad signature",
        ),
        (lambda body, h: (body, {**h, KEY_ID_HEADER: "0" * 16}), "unknown key"),
        (lambda body, h: (body, {SIGNATURE_HEADER: h[SIGNATURE_HEADER]}), "unknown key"),
    ],
)
def test_tampered_unsigned_and_malformed_are_refused(mutate: object, message: str) -> None:
    signer = Signer.generate()
    body, headers = mutate(BODY, signer.headers(BODY))  # type: ignore[operator]
    with pytest.raises(SignatureError, match=message):
        Verifier([signer.public_text()]).verify(body, headers)


def test_a_forger_with_another_key_is_refused_even_claiming_the_right_key_id() -> None:
    trusted, forger = Signer.generate(), Signer.generate()
    headers = forger.headers(BODY)
    headers[KEY_ID_HEADER] = trusted.headers(BODY)[KEY_ID_HEADER]
    with pytest.raises(SignatureError, match="bad signature"):
        Verifier([trusted.public_text()]).verify(BODY, headers)


def test_rotation_accepts_old_and_new_keys() -> None:
    old, new = Signer.generate(), Signer.generate()
    verifier = Verifier([old.public_text(), new.public_text()])
    verifier.verify(BODY, old.headers(BODY))
    verifier.verify(BODY, new.headers(BODY))


def test_private_key_round_trips_through_text() -> None:
    signer = Signer.generate()
    again = Signer.from_private(signer.private_text())
    assert again.public_text() == signer.public_text()
    assert again.headers(BODY) == signer.headers(BODY)  # Ed25519 is deterministic


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_bad_keys_are_configuration_errors(text: str) -> None:
    with pytest.raises(ValueError):
        Verifier([text])
    with pytest.raises(ValueError):
        Signer.from_private(text)


def test_no_keys_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no dispatcher public key"):
        Verifier([])


@pytest.mark.parametrize("field", [SIGNATURE_HEADER, KEY_ID_HEADER])
@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, 7, None])
def test_headers_of_other_types_are_refused_not_crashing(field: str, value: object) -> None:
    signer = Signer.generate()
    headers: dict[str, object] = dict(signer.headers(BODY))
    headers[field] = value
    with pytest.raises(SignatureError):
        Verifier([signer.public_text()]).verify(BODY, headers)
