"""The one owner of a process's broker connections, after dramatiq's broker pattern.

A side builds one :class:`Broker` from its :class:`BrokerSettings` and asks it for
the shapes it needs (a session, a consumer, a confirming publisher, a request
channel, a queue probe, multiplexed lanes) or for the one-shot jobs (declare the
topology, provision clients, peek, move shared queues to quorum). Every piece it
hands out is tracked weakly, so a piece its user dropped is forgotten, and
:meth:`Broker.close` closes every piece still alive.

The transport modules are imported inside each factory so that a process (the
agent) pays only for the shapes it uses.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from broker.settings import BrokerSettings

if TYPE_CHECKING:
    from broker.consumer import Consumer
    from broker.errors import BrokerError
    from broker.multiplex import Lane, Loop, OnDelivery
    from broker.peek import Peek
    from broker.publisher import ConfirmingPublisher, PublishHooks, Stamp
    from broker.queue_probe import QueueProbe
    from broker.requester import Reply, RequestChannel
    from broker.session import Session
    from broker.topology import QueueLimits


class Closable(Protocol):
    def close(self) -> None: ...


P = TypeVar("P", bound=Closable)


class Broker:
    """Hands out connections for one process and closes them all on :meth:`close`.

    Thread-safe for handing out and closing; each piece keeps its own threading rules.
    """

    def __init__(self, settings: BrokerSettings, *, name: str | None = None) -> None:
        self.settings = settings.named(name) if name else settings
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._pieces: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._closed = False

    @classmethod
    def from_url(cls, url: str | None = None, *, name: str | None = None) -> Broker:
        return cls(BrokerSettings.from_env(url), name=name)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def pieces(self) -> list[Closable]:
        """The pieces handed out and still alive, oldest first."""
        with self._lock:
            return [piece for _, piece in sorted(self._pieces.items())]

    def track(self, piece: P) -> P:
        """Own ``piece``: :meth:`close` will close it; returns it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this broker is closed")
            self._pieces[next(self._order)] = piece
        return piece

    def forget(self, piece: Closable) -> None:
        """Stop owning ``piece`` (its user closes it)."""
        with self._lock:
            for key, held in list(self._pieces.items()):
                if held is piece:
                    del self._pieces[key]

    def close(self) -> None:
        """Close every piece still alive, newest first; closing twice is fine."""
        with self._lock:
            self._closed = True
            pieces = [piece for _, piece in sorted(self._pieces.items(), reverse=True)]
            self._pieces.clear()
        for piece in pieces:
            piece.close()

    def named(self, name: str) -> Broker:
        """A broker for the same settings whose connections carry ``name``; closed with this one."""
        return self.track(Broker(self.settings, name=name))

    # Shapes of a connection.

    def session(self, *, prefetch: int = 1) -> Session:
        from broker.session import Session

        return self.track(Session(self.settings, prefetch=prefetch))

    def consumer(self, *, prefetch: int | None = None) -> Consumer:
        from broker.consumer import Consumer

        return self.track(Consumer(self.settings, prefetch=prefetch))

    def publisher(
        self,
        *,
        window: int = 1000,
        channels: int = 1,
        attempts: int = 5,
        confirm_timeout: float = 30.0,
        hooks: PublishHooks | None = None,
        stamp: Stamp | None = None,
    ) -> ConfirmingPublisher:
        from broker.publisher import ConfirmingPublisher

        return self.track(
            ConfirmingPublisher(
                self.settings,
                window=window,
                channels=channels,
                attempts=attempts,
                confirm_timeout=confirm_timeout,
                hooks=hooks,
                stamp=stamp,
            )
        )

    def requester(self, on_reply: Callable[[Reply], None]) -> RequestChannel:
        from broker.requester import RequestChannel

        return self.track(RequestChannel(self.settings, on_reply))

    def probe(self) -> QueueProbe:
        from broker.queue_probe import QueueProbe

        return self.track(QueueProbe(self.settings))

    def loop(self) -> Loop:
        from broker.multiplex import Loop

        return self.track(Loop())

    def lane(
        self,
        loop: Loop,
        on_delivery: OnDelivery,
        *,
        declare: bool = False,
        on_fatal: Callable[[BrokerError], None] | None = None,
        on_ready: Callable[[Lane], None] | None = None,
    ) -> Lane:
        from broker.multiplex import Lane

        return self.track(
            Lane(
                self.settings,
                loop,
                on_delivery,
                declare=declare,
                on_fatal=on_fatal,
                on_ready=on_ready,
            )
        )

    # One-shot jobs: each opens a connection of its own and closes it before returning.

    def declare_topology(self, *, doing: str = "declaring the topology") -> None:
        from broker.topology import declare_all

        declare_all(self.settings, doing=doing)

    def provision_clients(
        self,
        client_ids: Sequence[str],
        limits: QueueLimits | None = None,
        *,
        parallel: int = 16,
        timeout: float = 120.0,
    ) -> None:
        from broker.provisioning import provision_clients

        provision_clients(self.settings, client_ids, limits, parallel=parallel, timeout=timeout)

    def peek(self, queue: str, limit: int) -> Peek:
        from broker.peek import peek

        return peek(self.settings, queue, limit)

    def consumers(self, queue: str) -> int:
        from broker.peek import consumers

        return consumers(self.settings, queue)

    def move_to_quorum(self) -> dict[str, int]:
        from broker.migration import move_to_quorum

        return move_to_quorum(self.settings)
