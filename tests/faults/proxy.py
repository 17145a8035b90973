"""A TCP proxy in front of the broker that can cut connections or go half-open.

``cut()`` closes every proxied connection at once (a network drop). ``freeze()`` stops
forwarding on the current connections without closing them: both ends keep believing
the link is up, as with a dead NAT entry or a pulled cable. New connections made after
either are forwarded normally, so clients can recover by reconnecting.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket
    frozen: bool = False
    peers: dict[socket.socket, socket.socket] = field(default_factory=dict)


class Proxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self._upstream = upstream
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
