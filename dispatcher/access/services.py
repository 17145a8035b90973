"""Broker users for requesting services: they may write requests and nothing else.

A service (help desk, deployment pipeline, ...) publishes trigger requests to
``setevnt.requests`` and receives replies through direct reply-to, which needs no queue
and no read permission. It can neither read nor write client queues, declare anything,
nor see acks: everything else goes through the dispatcher's policy. Its broker user name
is what the policy names (``[users.NAME]``): the broker stamps it as the ``user_id``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from broker import topology
from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher.access.enroll import NOTHING, agent_url, claim_user

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# A service publishes requests over a connection or two per process.
SERVICE_LIMITS = {"max-connections": 16, "max-channels": 32}


@dataclass(frozen=True, slots=True)
class ServiceUser:
    name: str
    password: str
    url: str


def permissions_for_service() -> dict[str, str]:
    return {
        "configure": NOTHING,
        "write": f"^{re.escape(topology.REQUEST_EXCHANGE)}$",
        "read": NOTHING,
    }


def enroll_service(
    settings: BrokerSettings, management: Management, name: str, *, rotate: bool = False
) -> ServiceUser:
    """Create a service's broker user in this vhost (``rotate``: a new password for an
    enrolled one)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid service name {name!r}: 1-64 of letters, digits, _ . @ -")
    claim_user(management, name, rotate=rotate, what="service")
    password = secrets.token_urlsafe(24)
    management.put_user(name, password)
    management.set_permissions(settings.vhost, name, **permissions_for_service())
    management.set_user_limits(name, SERVICE_LIMITS)
    return ServiceUser(name, password, agent_url(settings, name, password))
