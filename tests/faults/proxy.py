"""A TCP proxy in front of the broker that can cut connections or go half-open.

``cut()`` closes every proxied connection at once (a network drop). ``freeze()`` stops
forwarding on the current connections without closing them: both ends keep believing
the link is up, as with a dead NAT entry or a pulled cable. ``withhold_confirms()`` (a
proxy made ``framed``) keeps forwarding everything on the current connections but the
broker's publisher confirms: a broker that takes publishes and never confirms them,
while its heartbeats keep the link alive. New connections made after any of them are
forwarded normally, so clients can recover by reconnecting.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field

# AMQP 0-9-1 frames: type (1 byte), channel (2), payload size (4), payload, frame end.
_HEADER, _FRAME_END, _METHOD = 7, 0xCE, 1
_CONFIRMS = {(60, 80), (60, 120)}  # basic.ack, basic.nack


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket
    frozen: bool = False
    withholding: bool = False
    inbound: bytearray = field(default_factory=bytearray)  # a framed proxy's partial frame
    peers: dict[socket.socket, socket.socket] = field(default_factory=dict)


class Proxy:
    def __init__(
        self, upstream: tuple[str, int] = ("127.0.0.1", 5672), *, framed: bool = False
    ) -> None:
        self._upstream = upstream
        self._framed = framed  # the broker's side is read frame by frame
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopping = False
        self.connections_made = 0
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def url(self, vhost_path: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost_path}"

    def cut(self) -> int:
        """Close every current connection; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._close(pair)
        return len(pairs)

    def freeze(self) -> int:
        """Stop forwarding on every current connection without closing it."""
        with self._lock:
            for pair in self._pairs:
                pair.frozen = True
            return len(self._pairs)

    def withhold_confirms(self) -> int:
        """Drop every publisher confirm the broker sends on the current connections."""
        assert self._framed, "withholding confirms needs Proxy(framed=True)"
        with self._lock:
            for pair in self._pairs:
                pair.withholding = True
            return len(self._pairs)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(timeout=5)
        self.cut()
        self._selector.close()
        self._listener.close()

    def _run(self) -> None:
        while not self._stopping:
            for key, _events in self._selector.select(timeout=0.1):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _address = self._listener.accept()
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        pair = _Pair(client, upstream)
        pair.peers = {client: upstream, upstream: client}
        with self._lock:
            self._pairs.append(pair)
            self.connections_made += 1
        self._selector.register(client, selectors.EVENT_READ, pair)
        self._selector.register(upstream, selectors.EVENT_READ, pair)

    def _forward(self, source: socket.socket, pair: _Pair) -> None:
        if pair.frozen:
            # Leave the bytes unread: nothing moves, nothing closes. Stop watching the
            # sockets too, or unread data would make select() spin.
            for sock in (pair.client, pair.upstream):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            return
        try:
            data = source.recv(65536)
            if data:
                if self._framed and source is pair.upstream:
                    data = _passed(pair, data)
                pair.peers[source].sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        self._close(pair)

    def _close(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.upstream):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()


def _passed(pair: _Pair, data: bytes) -> bytes:
    """The whole frames of the broker's bytes so far, less the confirms being withheld."""
    buffer = pair.inbound
    buffer += data
    out = bytearray()
    while len(buffer) >= _HEADER:
        end = _HEADER + int.from_bytes(buffer[3:7], "big")
        if len(buffer) <= end:
            break
        frame = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        assert frame[-1] == _FRAME_END, "not an AMQP frame"
        method = (int.from_bytes(frame[7:9], "big"), int.from_bytes(frame[9:11], "big"))
        if not (pair.withholding and frame[0] == _METHOD and method in _CONFIRMS):
            out += frame
    return bytes(out)
