"""Who may say what on the ack path: the AMQP ``user_id`` decides, never a message body.

The broker checks a message's ``user_id`` against the publishing connection's user, so it
names the sender. An ack, a hello or a heartbeat speaks for the client its body names:
it counts only from that client's own broker user (enrollment makes the user name the
client id) or a *trusted* sender (a simulated fleet's one user, a development broker's
guest: ``$SETEVNT_TRUSTED_SENDERS``). Publish reports and :class:`schemas.messages.Issued`
come from *dispatchers*: the service's own broker user and ``$SETEVNT_DISPATCHER_USERS``
(the operators' ``setevnt`` users, other publishing services).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

TRUSTED_ENV = "SETEVNT_TRUSTED_SENDERS"
DISPATCHERS_ENV = "SETEVNT_DISPATCHER_USERS"


def _names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True, slots=True)
class Senders:
    trusted: frozenset[str] = frozenset()
    dispatchers: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, own_user: str, environ: Mapping[str, str] | None = None) -> Senders:
        """The senders a service running as broker user ``own_user`` accepts."""
        env = os.environ if environ is None else environ
        return cls(
            trusted=_names(env.get(TRUSTED_ENV, "")),
            dispatchers=_names(env.get(DISPATCHERS_ENV, "")) | {own_user},
        )

    def not_for(self, client_id: str, sender: str | None) -> str | None:
        """Why a message speaking for ``client_id`` sent by ``sender`` does not count, or
        None when it does."""
        if sender is None:
            return "missing-user-id"
        if sender == client_id or sender in self.trusted:
            return None
        return "wrong-user-id"

    def is_dispatcher(self, sender: str | None) -> bool:
        return sender is not None and sender in self.dispatchers
