"""Enrollment: give a client a broker user that can do exactly what an agent needs.

An enrolled agent can read its own queue, publish to the ack exchange with only its own
routing keys (``ack.<id>`` and ``hello.<id>``, enforced by a topic permission), and
configure nothing: its queue is provisioned by the dispatcher. Its broker user name is
its client id, so the ``user_id`` the broker validates on each ack names the client.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from broker import topology
from broker.management import Management
from broker.settings import BrokerSettings

NOTHING = "^$"
# An agent holds two connections of one channel each; room for a reconnect overlapping
# the old connections' close, not for a compromised client to exhaust the broker.
AGENT_LIMITS = {"max-connections": 4, "max-channels": 8}


class AlreadyEnrolled(ValueError):
    """The broker user exists: replacing it must be asked for, and never one of a human."""


def claim_user(management: Management, name: str, *, rotate: bool, what: str) -> None:
    """Refuse to replace an existing broker user unless ``rotate``; never one with tags.

    Replacing a user resets its password and clears its tags: an administrator named like
    a client would lose its rights, and a running agent its connection.
    """
    existing = management.user(name)
    if existing is None:
        return
    tags = existing.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t]
    if tags:
        raise AlreadyEnrolled(
            f"broker user {name!r} exists with tags {', '.join(map(str, tags))}: it is not "
            f"a setevnt {what}'s; choose another name or remove that user first"
        )
    if not rotate:
        raise AlreadyEnrolled(
            f"{what} {name!r} is already enrolled: --rotate gives it a new password "
            "(the old one stops working)"
        )


@dataclass(frozen=True, slots=True)
class Enrollment:
    """The client's new broker user; :mod:`dispatcher.access.agent_config` writes its config."""

    client_id: str
    password: str
    agent_url: str


def permissions_for(client_id: str) -> dict[str, str]:
    own_queue = re.escape(topology.client_queue(client_id))
    return {
        "configure": NOTHING,
        "write": f"^{re.escape(topology.ACK_EXCHANGE)}$",
        "read": f"^{own_queue}$",
    }


def topic_permissions_for(client_id: str) -> dict[str, str]:
    own = re.escape(client_id)
    return {
        "exchange": topology.ACK_EXCHANGE,
        "write": f"^({topology.ACK_KEY}|{topology.HELLO_KEY})\\.{own}$",
        "read": NOTHING,
    }


def enroll(
    settings: BrokerSettings,
    management: Management,
    client_id: str,
    *,
    rotate: bool = False,
) -> Enrollment:
    """Create the client's user, permissions and limits (``rotate``: replace an enrolled
    client's password); provision its queue first."""
    topology.client_queue(client_id)  # validates the id
    claim_user(management, client_id, rotate=rotate, what="client")
    password = secrets.token_urlsafe(24)
    vhost = settings.vhost
    management.put_user(client_id, password)
    management.set_permissions(vhost, client_id, **permissions_for(client_id))
    management.set_topic_permissions(vhost, client_id, **topic_permissions_for(client_id))
    management.set_user_limits(client_id, AGENT_LIMITS)
    return Enrollment(client_id, password, agent_url(settings, client_id, password))


def revoke(management: Management, client_id: str) -> int:
    """Delete the client's user; the broker closes its open connections. Returns how many."""
    open_connections = management.user_connections(client_id)
    management.delete_user(client_id)
    for name in management.user_connections(client_id):  # any the broker left open
        management.close_connection(name, f"setevnt: {client_id} revoked")
    return len(open_connections)


def agent_url(settings: BrokerSettings, user: str, password: str) -> str:
    """The agent's URL: every node of a cluster, with the agent's own credentials."""
    return ",".join(_node_url(url, user, password) for url in settings.urls)


def _node_url(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/%2F", parts.query, ""))
