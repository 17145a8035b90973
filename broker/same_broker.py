"""Prove that a management API and an AMQP URL are one broker before changing users.

A management URL and an AMQP URL are given separately (or defaulted), and nothing in
either names the other's node: `enroll` pointed at one node could create a user on
another and print a config that looks fine. So: declare an exclusive, auto-delete queue
with a random name over AMQP, and look it up through the API. Only the broker holding
that connection can know the name; the queue dies with the connection.
"""

from __future__ import annotations

import time

from broker import topology
from broker.connection import translate_errors
from broker.link import Link
from broker.management import MANAGEMENT_ENV, Management
from broker.settings import BrokerSettings

# The API may answer a moment after the queue exists on a loaded broker: look again
# for this long before calling it another broker.
LOOK_FOR = 3.0


class DifferentBroker(ValueError):
    """The management API answers for another broker than the AMQP URL's."""


def check(settings: BrokerSettings, management: Management, look_for: float = LOOK_FOR) -> None:
    """Raise :class:`DifferentBroker` unless ``management`` is the API of ``settings``'
    broker; a broker or an API that cannot be reached raises :class:`BrokerError`."""
    name = topology.probe_queue()
    with Link(settings.named("setevnt (same-broker check)")) as link:
        with translate_errors("declaring a probe queue"):
            link.channel.queue_declare(name, exclusive=True, auto_delete=True)
        if not _found(management, settings.vhost, name, look_for):
            raise DifferentBroker(
                f"the management API at {management.base_url} is not the broker of "
                f"{settings.redacted()}: pass --management-url (or ${MANAGEMENT_ENV}) "
                "of that broker"
            )


def _found(management: Management, vhost: str, name: str, look_for: float) -> bool:
    deadline = time.monotonic() + look_for
    while not management.queue_exists(vhost, name):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
