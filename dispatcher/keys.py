"""The dispatcher's signing key: generated once, kept in a file only it can read."""

from __future__ import annotations

import os
from pathlib import Path

from broker.publisher import Outgoing, Stamp
from schemas.signing import Signer

KEY_FILE_ENV = "SETEVNT_SIGNING_KEY_FILE"


def generate(path: str | Path) -> Signer:
    """Write a new private key to ``path`` (mode 0600, refusing to overwrite)."""
    target = Path(path)
    signer = Signer.generate()
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as out:
        out.write(signer.private_text() + "\n")
    return signer


def load(path: str | Path | None = None) -> Signer | None:
    """The key from ``path``, else ``$SETEVNT_SIGNING_KEY_FILE``, else None (unsigned)."""
    chosen = path or os.environ.get(KEY_FILE_ENV)
    if not chosen:
        return None
    try:
        text = Path(chosen).read_text(encoding="ascii")
    except OSError as exc:
        raise ValueError(f"signing key {chosen}: {exc.strerror}") from None
    try:
        return Signer.from_private(text)
    except ValueError as exc:
        raise ValueError(f"signing key {chosen}: {exc}") from None


def command_stamp(signer: Signer | None = None) -> Stamp | None:
    """A publisher stamp that signs commands (and nothing else) with ``signer``.

    Without a signer, the key file named by ``$SETEVNT_SIGNING_KEY_FILE`` is used; with
    neither, commands go unsigned and agents that require signatures refuse them.
    """
    chosen = signer or load()
    if chosen is None:
        return None

    def stamp(message: Outgoing) -> dict[str, str] | None:
        return chosen.headers(message.body) if message.message_type == "command" else None

    return stamp
