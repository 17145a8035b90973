"""Everything that talks AMQP: connections, error translation, topology, consuming, publishing.

This package is the only code that imports pika; the rest of setevnt sees
:class:`broker.link.Incoming` deliveries, plain callables and the small error
hierarchy in :mod:`broker.errors`. Every blocking connection is a
:class:`broker.link.Link`; :mod:`broker.session`, :mod:`broker.consumer` and
:mod:`broker.requester` are the shapes the sides use it in.

A side gets those shapes from :class:`broker.broker.Broker`, the one owner of a
process's connections (it closes every piece it handed out). It is not re-exported
here: importing it from ``broker`` would load it in every process, and it imports
the transports lazily so the agent pays only for the ones it uses.
"""

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import DEFAULT_URL, BrokerSettings

__all__ = ["DEFAULT_URL", "BrokerError", "BrokerRefused", "BrokerSettings", "ConnectionLost"]
