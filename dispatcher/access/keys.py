"""The dispatcher's signing key: generated once, kept in a file only it can read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from broker.publisher import Outgoing, Stamp
from schemas.signing import Signer

KEY_FILE_ENV = "SETEVNT_SIGNING_KEY_FILE"
NO_KEY = f"no signing key: give --key PATH or set ${KEY_FILE_ENV}, or pass --unsigned"
UNSIGNED_COMMANDS = "agents that require signatures reject unsigned commands"


class NoSigningKey(ValueError):
    """A publisher was started with neither a key nor an explicit ``--unsigned``."""


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
        data = Path(chosen).read_bytes()
    except OSError as exc:
        raise ValueError(f"signing key {chosen}: {exc.strerror}") from None
    try:
        return Signer.from_private(data.decode("ascii"))
    except ValueError:  # also a UnicodeDecodeError: a binary file
        raise ValueError(
            f"signing key {chosen}: not a key `setevnt-dispatcher keygen` wrote"
        ) from None


@dataclass(frozen=True, slots=True)
class Signing:
    """How a process signs its commands, chosen once when it starts."""

    signer: Signer | None  # None: unsigned, because the operator said so

    @classmethod
    def from_env(cls) -> Signing:
        """The library's default: ``$SETEVNT_SIGNING_KEY_FILE`` when set, else unsigned."""
        return cls(load())

    def stamp(self) -> Stamp | None:
        return command_stamp(self.signer) if self.signer is not None else None


def choose(
    path: str | None,
    unsigned: bool,
    environ: Mapping[str, str] | None = None,
    *,
    unsigned_means: str = UNSIGNED_COMMANDS,
) -> Signing:
    """A publishing command's key: ``--key``, else ``$SETEVNT_SIGNING_KEY_FILE``; refused
    (:class:`NoSigningKey`) with neither unless ``unsigned``. A bad key file is a
    ValueError naming the file, raised here, before anything is published."""
    if path and unsigned:
        raise ValueError("--key and --unsigned contradict each other: give one")
    if unsigned:
        return Signing(None)
    chosen = path or (os.environ if environ is None else environ).get(KEY_FILE_ENV)
    if not chosen:
        raise NoSigningKey(f"{NO_KEY} ({unsigned_means})")
    return Signing(load(chosen))


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
