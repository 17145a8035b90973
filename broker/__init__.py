"""Everything that talks AMQP: connections, error translation, topology, consuming, publishing.

This package is the only code that imports pika; the rest of setevnt sees
:class:`broker.link.Incoming` deliveries, plain callables and the small error
hierarchy in :mod:`broker.errors`. Every blocking connection is a
:class:`broker.link.Link`; :mod:`broker.session`, :mod:`broker.consumer` and
:mod:`broker.requester` are the shapes the sides use it in.
"""

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import DEFAULT_URL, BrokerSettings

__all__ = ["DEFAULT_URL", "BrokerError", "BrokerRefused", "BrokerSettings", "ConnectionLost"]
