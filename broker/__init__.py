"""Everything that talks AMQP: connections, error translation, topology, publishing.

This package is the only code that imports pika's exceptions; the rest of setevnt sees
the small error hierarchy in :mod:`broker.errors`.
"""

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import DEFAULT_URL, BrokerSettings

__all__ = ["DEFAULT_URL", "BrokerError", "BrokerRefused", "BrokerSettings", "ConnectionLost"]
