"""Opening connections, the properties setevnt's messages carry, and pika's exceptions
turned into setevnt's.

Every connection of a process is opened here: blocking ones by
:class:`broker.link.Link` through :func:`open_blocking`, asynchronous ones (the pipelined
publisher, the simulator's lanes, bulk provisioning) through :func:`open_async`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import re
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions as pe

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# AMQP reply codes that mean "the broker refuses this", not "the network failed".
_REFUSAL_CODES = {402, 403, 404, 405, 406, 530, 540}
# How pika words a probable refusal that was the broker's own close: the close it wraps.
_CLOSED_BY_BROKER = re.compile(r"ConnectionClosedByBroker: \((\d+)\)")


# Where the next connection starts in a list of nodes: each connection starts one node
# further, from a random first node, so that a fleet's connections spread over the
# cluster and a retry after a failure goes to another node first.
_turn = itertools.count(random.randrange(1 << 16))


def node_order(urls: tuple[str, ...]) -> list[str]:
    """``urls`` rotated to start at the next node in turn."""
    start = next(_turn) % len(urls)
    return list(urls[start:] + urls[:start])


def parameters(settings: BrokerSettings) -> pika.URLParameters:
    """Parameters for one connection: the next node in turn when there are several
    (for pika's ``SelectConnection``, which takes one node; a retry takes the next)."""
    return _node_parameters(settings, node_order(settings.urls)[0])


def all_parameters(settings: BrokerSettings) -> list[pika.URLParameters]:
    """Parameters for every node, starting with the next in turn: pika's
    ``BlockingConnection`` tries them in this order until one answers."""
    return [_node_parameters(settings, url) for url in node_order(settings.urls)]


def _node_parameters(settings: BrokerSettings, url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if settings.tls:
        params.ssl_options = pika.SSLOptions(tls_context(settings), settings.host)
    params.heartbeat = settings.heartbeat
    params.blocked_connection_timeout = settings.blocked_connection_timeout
    params.connection_attempts = settings.connection_attempts
    params.socket_timeout = settings.socket_timeout
    params.client_properties = {"connection_name": settings.connection_name}
    return params


def tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name.

    Without ``ca_file`` the system's trusted CAs are used; a client certificate is
    presented when ``cert_file`` is set (``key_file`` defaults to the same file).
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        # A configuration problem: retrying the connection would not fix it.
        raise BrokerRefused(f"TLS set-up: {exc}") from None
    return context


def open_blocking(settings: BrokerSettings) -> pika.BlockingConnection:
    with translate_errors(f"connecting to {settings.redacted()}"):
        return pika.BlockingConnection(all_parameters(settings))


def open_async(
    params: pika.URLParameters,
    *,
    on_open: Callable[[Any], None],
    on_open_error: Callable[[Any, BaseException], None],
    on_closed: Callable[[Any, BaseException], None],
    ioloop: Any = None,
) -> pika.SelectConnection:
    """Start opening an asynchronous connection (on ``ioloop``, else a loop of its own);
    the callbacks follow on that loop."""
    return pika.SelectConnection(
        params,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=on_closed,
        custom_ioloop=ioloop,
    )


def message_properties(
    settings: BrokerSettings,
    message_type: str,
    *,
    persistent: bool = True,
    message_id: str | None = None,
    user_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    headers: dict[str, object] | None = None,
    expiration_ms: int | None = None,
) -> pika.BasicProperties:
    """A setevnt message's properties, sent by ``settings``' connection.

    ``user_id`` defaults to that connection's user: the broker refuses any other, so a
    receiver can trust it to name the sender.
    """
    return pika.BasicProperties(
        content_type="application/msgpack",
        type=message_type,
        message_id=message_id,
        delivery_mode=2 if persistent else 1,
        app_id=settings.connection_name,
        user_id=user_id if user_id is not None else settings.username,
        correlation_id=correlation_id,
        reply_to=reply_to,
        headers=headers,
        expiration=str(expiration_ms) if expiration_ms is not None else None,
    )


def translate(exc: BaseException, doing: str = "") -> BrokerError:
    """Map one pika exception to :class:`BrokerRefused` or :class:`ConnectionLost`."""
    error = _translate(exc, doing)
    error.__cause__ = exc  # where :func:`explain` finds the socket's reason
    return error


def _translate(exc: BaseException, doing: str) -> BrokerError:
    where = f"{doing}: " if doing else ""
    if isinstance(exc, pe.AuthenticationError):  # no mechanism the broker offers will do
        return BrokerRefused(f"{where}authentication refused ({exc})", 403)
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.ProbableAccessDeniedError)):
        return _opening_failed(exc, where)
    if isinstance(exc, pe.AMQPHeartbeatTimeout):
        return ConnectionLost(f"{where}no heartbeat from the broker: half-open link ({exc})")
    code = _reply_code(exc)
    if isinstance(exc, (pe.ChannelClosedByBroker, pe.ConnectionClosedByBroker)) and (
        code in _REFUSAL_CODES
    ):
        text = getattr(exc, "reply_text", str(exc))
        return BrokerRefused(f"{where}broker refused: {code} {text}", code)
    return ConnectionLost(f"{where}{_describe(exc)}")


def _opening_failed(exc: pe.AMQPConnectionError, where: str) -> BrokerError:
    """pika's guess for a link that ended while it was being opened, checked.

    pika calls it a probable refusal by the step the opening had reached, whether the
    broker closed the link with a refusal or the link was just lost (a broker starting or
    shutting down resets it): only the first is final.
    """
    closed = _CLOSED_BY_BROKER.match(str(exc))
    code = int(closed.group(1)) if closed else None
    if code not in _REFUSAL_CODES:
        return ConnectionLost(f"{where}the link was lost while it was being opened ({exc})")
    if isinstance(exc, pe.ProbableAuthenticationError):
        return BrokerRefused(f"{where}authentication refused ({exc})", code)
    return BrokerRefused(f"{where}access to the virtual host refused ({exc})", code)


def explain(exc: BrokerError, settings: BrokerSettings) -> str:
    """One line for an operator: which broker, and what went wrong in a few words."""
    if isinstance(exc, BrokerRefused):
        return f"the broker at {settings.redacted()} refused: {exc}"
    return f"cannot reach the broker at {settings.redacted()}: {_root_cause(exc)}"


def _root_cause(exc: BaseException) -> str:
    """``connection refused``, ``timed out``, ...: the socket's own words when there are
    any, found through pika's nested exceptions and our translation's cause."""
    chain: BaseException | None = exc
    while chain is not None:
        cause = _innermost(chain)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
        if isinstance(cause, TimeoutError):
            return "timed out"
        chain = chain.__cause__
    return str(exc)


def _describe(exc: BaseException) -> str:
    """pika's connection errors often have an empty message; find the underlying cause."""
    cause = _innermost(exc)
    text = str(cause) or repr(cause)  # some of pika's carry their message only in repr()
    return text if cause is exc else f"{type(exc).__name__} ({text})"


def _innermost(exc: BaseException) -> BaseException:
    seen: list[BaseException] = [exc]
    while True:
        inner = [a for a in seen[-1].args if isinstance(a, BaseException)]
        wrapped = getattr(seen[-1], "exception", None)  # pika's connector errors
        if isinstance(wrapped, BaseException):
            inner.append(wrapped)
        nested = getattr(seen[-1], "exceptions", None)
        if isinstance(nested, (list, tuple)) and nested:
            inner.append(nested[-1])
        if not inner or inner[0] in seen:
            break
        seen.append(inner[0])
    return seen[-1]


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
