"""Opening connections and turning pika's exceptions into setevnt's."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pika
import pika.exceptions as pe

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# AMQP reply codes that mean "the broker refuses this", not "the network failed".
_REFUSAL_CODES = {402, 403, 404, 405, 406, 530, 540}


def parameters(settings: BrokerSettings) -> pika.URLParameters:
    params = pika.URLParameters(settings.url)
    params.heartbeat = settings.heartbeat
    params.blocked_connection_timeout = settings.blocked_connection_timeout
    params.connection_attempts = settings.connection_attempts
    params.socket_timeout = settings.socket_timeout
    params.client_properties = {"connection_name": settings.connection_name}
    return params


def open_blocking(settings: BrokerSettings) -> pika.BlockingConnection:
    with translate_errors(f"connecting to {settings.redacted()}"):
        return pika.BlockingConnection(parameters(settings))


def translate(exc: BaseException, doing: str = "") -> BrokerError:
    """Map one pika exception to :class:`BrokerRefused` or :class:`ConnectionLost`."""
    where = f"{doing}: " if doing else ""
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return BrokerRefused(f"{where}authentication refused ({exc})", 403)
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return BrokerRefused(f"{where}access to the virtual host refused ({exc})", 530)
    code = _reply_code(exc)
    if isinstance(exc, (pe.ChannelClosedByBroker, pe.ConnectionClosedByBroker)) and (
        code in _REFUSAL_CODES
    ):
        text = getattr(exc, "reply_text", str(exc))
        return BrokerRefused(f"{where}broker refused: {code} {text}", code)
    return ConnectionLost(f"{where}{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translate_errors(doing: str = "") -> Iterator[None]:
    try:
        yield
    except (pe.AMQPError, OSError) as exc:
        raise translate(exc, doing) from exc


def _reply_code(exc: BaseException) -> int | None:
    code = getattr(exc, "reply_code", None)
    return code if isinstance(code, int) else None


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be dead; a close failure changes nothing."""
    if connection is None or connection.is_closed:
        return
    try:
        connection.close()
    except (pe.AMQPError, OSError) as exc:
        log.debug("closing a broken connection: %s", exc)
