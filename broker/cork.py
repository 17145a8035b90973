"""Holding a connection's writes back and sending them as one.

pika hands its transport every frame on its own (a message is three: method, header and
body), and the transport sends each with a system call of its own on the I/O loop's next
pass, a TCP segment each for the broker to read. A publisher that publishes many
messages at once holds the connection's writes meanwhile (:meth:`Cork.held`) and lets
them go together: the same bytes in the same order, in one system call. Whatever the
connection sends while it reads one chunk from the broker (a publisher's refills after
the confirms in it) is held the same way.

Only pika's public non-blocking I/O interfaces (``pika.adapters.utils.nbio_interface``)
are used: ``SelectConnection`` takes an ``AbstractIOServices`` as its loop, and
:class:`CorkingServices` is pika's own selector adapter with one change, in the
transport it links each connection to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pika.adapters.select_connection import IOLoop
from pika.adapters.utils import nbio_interface as nbio
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter


class Cork:
    """The held writes of the connection that :class:`CorkingServices` links up.

    ``before_release``, when set, runs as the outermost hold ends, its writes still held:
    a publisher settles there the confirms of a chunk it read, all at once, and the
    refill they make goes out with the rest.
    """

    def __init__(self) -> None:
        self._transport: _CorkedTransport | None = None
        self.before_release: Callable[[], None] | None = None

    @property
    def holding(self) -> bool:
        """Whether writes are held now (inside :meth:`held`, on a linked connection)."""
        return self._transport is not None and self._transport.holding

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Writes made inside go out together on leaving; nested holds on leaving the
        outermost. Without a linked connection, a hold changes nothing."""
        transport = self._transport
        if transport is None or transport.holding:
            yield
            return
        transport.holding = True
        try:
            yield
            if self.before_release is not None:
                self.before_release()
        finally:
            transport.holding = False
            transport.flush()


class _CorkedTransport(nbio.AbstractStreamTransport):  # type: ignore[misc]
    """pika's transport, with writes held while :attr:`holding`."""

    def __init__(self, transport: Any, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self._held: list[bytes] = []
        self.holding = False

    def write(self, data: bytes) -> None:
        if self.holding:
            self._held.append(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._transport.write(data)

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def get_protocol(self) -> Any:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(map(len, self._held))


class _Protocol(nbio.AbstractStreamProtocol):  # type: ignore[misc]
    """Stands between pika's transport and the connection: hands the connection a
    corked transport, and holds its writes while it takes in what was read."""

    def __init__(self, protocol: Any, cork: Cork) -> None:
        self.protocol = protocol
        self.transport: _CorkedTransport | None = None
        self._cork = cork

    def connection_made(self, transport: Any) -> None:
        self.transport = self._cork._transport = _CorkedTransport(transport, self.protocol)
        self.protocol.connection_made(self.transport)

    def connection_lost(self, error: BaseException | None) -> None:
        self._cork._transport = None
        self.protocol.connection_lost(error)

    def eof_received(self) -> Any:
        return self.protocol.eof_received()

    def data_received(self, data: bytes) -> None:
        with self._cork.held():
            self.protocol.data_received(data)


class CorkingServices(nbio.AbstractIOServices, nbio.AbstractFileDescriptorServices):  # type: ignore[misc]
    """pika's selector I/O services, on a loop of their own, for one connection whose
    writes :attr:`cork` holds: give it to ``SelectConnection`` as its loop."""

    def __init__(self) -> None:
        self._services = SelectorIOServicesAdapter(IOLoop())
        self.cork = Cork()

    def create_streaming_connection(
        self,
        protocol_factory: Callable[[], Any],
        sock: Any,
        on_done: Callable[[Any], None],
        ssl_context: Any = None,
        server_hostname: str | None = None,
    ) -> Any:
        def linked(result: Any) -> None:
            if isinstance(result, BaseException):
                on_done(result)
                return
            _transport, protocol = result
            on_done((protocol.transport, protocol.protocol))  # the pair pika made

        return self._services.create_streaming_connection(
            lambda: _Protocol(protocol_factory(), self.cork),
            sock,
            linked,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
        )

    # The rest is pika's own.

    def get_native_ioloop(self) -> Any:
        return self._services.get_native_ioloop()

    def close(self) -> None:
        self._services.close()

    def run(self) -> None:
        self._services.run()

    def stop(self) -> None:
        self._services.stop()

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        self._services.add_callback_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return self._services.call_later(delay, callback)

    def getaddrinfo(
        self,
        host: str,
        port: int,
        on_done: Callable[..., None],
        family: int = 0,
        socktype: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        return self._services.getaddrinfo(host, port, on_done, family, socktype, proto, flags)

    def connect_socket(self, sock: Any, resolved_addr: Any, on_done: Callable[..., None]) -> Any:
        return self._services.connect_socket(sock, resolved_addr, on_done)

    def set_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        self._services.set_reader(fd, on_readable)

    def remove_reader(self, fd: int) -> bool:
        return bool(self._services.remove_reader(fd))

    def set_writer(self, fd: int, on_writable: Callable[[], None]) -> None:
        self._services.set_writer(fd, on_writable)

    def remove_writer(self, fd: int) -> bool:
        return bool(self._services.remove_writer(fd))
