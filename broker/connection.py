"""The owner of every blocking connection, and pika's exceptions turned into setevnt's.

A :class:`Link` is one named ``BlockingConnection`` with its one channel: it opens,
pumps, consumes (handlers get an :class:`Incoming`, never a pika object), settles,
publishes with confirms and closes quietly, and every pika failure leaves it as a
:class:`broker.errors.BrokerError`. A link that can no longer do its job says so:
:meth:`Link.pump` raises :class:`ConnectionLost` once the broker closed its channel or
cancelled one of its consumers, so a supervisor builds a new one instead of idling.
The consuming session, the collector's consumer, the requester and the one-shot
declares and peeks are built on it. The asynchronous transports (the pipelined
publisher, the simulator's lanes, bulk provisioning) share :func:`parameters` and
:func:`translate`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pe

from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# AMQP reply codes that mean "the broker refuses this", not "the network failed".
_REFUSAL_CODES = {402, 403, 404, 405, 406, 530, 540}


def parameters(settings: BrokerSettings) -> pika.URLParameters:
    params = pika.URLParameters(settings.url)
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
        return pika.BlockingConnection(parameters(settings))


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
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return BrokerRefused(f"{where}authentication refused ({exc})", 403)
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return BrokerRefused(f"{where}access to the virtual host refused ({exc})", 530)
    if isinstance(exc, pe.AMQPHeartbeatTimeout):
        return ConnectionLost(f"{where}no heartbeat from the broker: half-open link ({exc})")
    code = _reply_code(exc)
    if isinstance(exc, (pe.ChannelClosedByBroker, pe.ConnectionClosedByBroker)) and (
        code in _REFUSAL_CODES
    ):
        text = getattr(exc, "reply_text", str(exc))
        return BrokerRefused(f"{where}broker refused: {code} {text}", code)
    return ConnectionLost(f"{where}{_describe(exc)}")


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


@dataclass(frozen=True, slots=True)
class Incoming:
    """One delivery, as handlers outside this package see it."""

    delivery_tag: int
    body: bytes
    message_id: str | None
    redelivered: bool
    queue: str
    headers: dict[str, object] | None = None
    user_id: str | None = None  # validated by the broker: the publishing connection's user
    reply_to: str | None = None
    correlation_id: str | None = None


def incoming(queue: str, method: Any, properties: Any, body: bytes) -> Incoming:
    """Our own record of one pika delivery."""
    return Incoming(
        delivery_tag=method.delivery_tag,
        body=body,
        message_id=properties.message_id,
        redelivered=bool(method.redelivered),
        queue=queue,
        headers=properties.headers,
        user_id=properties.user_id,
        reply_to=properties.reply_to,
        correlation_id=properties.correlation_id,
    )


class Link:
    """One named blocking connection and its channel; not thread-safe except
    :meth:`call_threadsafe`.

    ``prefetch`` bounds the deliveries not yet settled (None: no bound); ``confirms``
    makes every :meth:`publish` wait for the broker's confirm; ``role`` names the
    channel in the errors that say the broker closed it.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        prefetch: int | None = None,
        confirms: bool = False,
        role: str = "consuming",
    ) -> None:
        self._settings = settings
        self._prefetch = prefetch
        self._confirms = confirms
        self._role = role
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._cancelled: str | None = None  # a queue whose consumer the broker cancelled
        self._settles = False  # a consumer acks its deliveries itself

    def open(self, doing: str = "opening a channel") -> None:
        """Connect and open the channel (raises a BrokerError; nothing is left open)."""
        self._cancelled = None
        self._settles = False
        self._consumers.clear()
        self._connection = open_blocking(self._settings)
        try:
            with translate_errors(doing):
                self._channel = self._connection.channel()
                self._channel.add_on_cancel_callback(self._on_cancel)
                if self._prefetch is not None:
                    self._channel.basic_qos(prefetch_count=self._prefetch)
                if self._confirms:
                    self._channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, which may already be dead; a close failure changes nothing."""
        close_quietly(self._connection)
        self._connection = self._channel = None

    def __enter__(self) -> Link:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def channel(self) -> Any:
        """The pika channel, for the declares and reads of other broker/ modules."""
        assert self._channel is not None, "open() first"
        return self._channel

    def consume(
        self, queue: str, handler: Callable[[Incoming], None], *, auto_ack: bool = False
    ) -> str:
        """Hand every delivery of ``queue`` to ``handler`` (inside :meth:`pump`); returns
        the consumer tag."""

        def deliver(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            handler(incoming(queue, method, properties, body))

        with translate_errors(f"consuming {queue}"):
            tag: str = self.channel.basic_consume(queue, deliver, auto_ack=auto_ack)
        self._consumers[tag] = queue
        self._settles = self._settles or not auto_ack
        return tag

    def cancel(self, consumer_tag: str) -> None:
        with translate_errors("cancelling consumer"):
            self.channel.basic_cancel(consumer_tag)
        self._consumers.pop(consumer_tag, None)

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        with translate_errors("acknowledging deliveries"):
            self.channel.basic_ack(delivery_tag, multiple=multiple)

    def reject(self, delivery_tag: int, *, requeue: bool = False) -> None:
        """Without requeue, the delivery goes to its queue's dead letters."""
        with translate_errors("rejecting a delivery"):
            self.channel.basic_nack(delivery_tag, requeue=requeue)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        mandatory: bool = False,
        unroutable: str | None = None,
        nacked: str | None = None,
    ) -> None:
        """Publish; with ``confirms``, return only once the broker confirmed it.

        A message the broker returned (``mandatory``) or nacked raises
        :class:`BrokerRefused` with ``unroutable`` or ``nacked`` as its text when given,
        else :class:`ConnectionLost`, like any other failure.
        """
        doing = f"publishing to {exchange or 'default exchange'}"
        try:
            self.channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pe.UnroutableError as exc:
            raise _refused(unroutable, exc, doing) from exc
        except pe.NackError as exc:
            raise _refused(nacked, exc, doing) from exc
        except (pe.AMQPError, OSError) as exc:
            raise translate(exc, doing) from exc

    def pump(self, seconds: float, doing: str = "receiving") -> None:
        """Process deliveries and callbacks for up to ``seconds``; raises ConnectionLost
        when the broker took the channel or a consumer away."""
        assert self._connection is not None, "open() first"
        with translate_errors(doing):
            self._connection.process_data_events(time_limit=seconds)
        self._check()

    def _check(self) -> None:
        if self._cancelled is not None:
            raise ConnectionLost(
                f"the broker cancelled the consumer of {self._cancelled} (was the queue deleted?)"
            )
        if self._channel is not None and self._channel.is_closed:
            why = (
                " (a delivery held past its consumer_timeout, or a settle it refused)"
                if self._settles
                else ""
            )
            raise ConnectionLost(f"the broker closed the {self._role} channel{why}")

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = self._consumers.pop(frame.method.consumer_tag, "a queue")

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the pumping thread; False when the link is already gone."""
        connection = self._connection
        if connection is None:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except (pe.AMQPError, OSError) as exc:
            log.debug("link gone, dropping callback: %s", translate(exc))
            return False
        return True


def _refused(text: str | None, exc: BaseException, doing: str) -> BrokerError:
    return BrokerRefused(text) if text is not None else translate(exc, doing)
