"""Provisioning many client queues at once: declares pipelined over parallel channels.

Declaring a durable queue costs the broker a metadata write, and one declare at a time
is slow (docs/performance.md). The broker handles channels in parallel, so the declares
are spread over ``parallel`` channels of one connection without waiting for each reply.
Still: provision when clients enroll, first appear or say hello (an agent's session
start), never inside a storm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from broker import topology
from broker.connection import node_order, open_async, parameters, translate
from broker.errors import BrokerError, ConfirmTimeout
from broker.placement import ensure_placement
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)


class _Provisioning:
    def __init__(
        self, ids: Sequence[str], limits: topology.QueueLimits | None, parallel: int
    ) -> None:
        self.ids = ids
        self.limits = limits
        self.parallel = max(1, min(parallel, len(ids)))
        self.remaining = len(ids)
        self.error: BrokerError | None = None
        self.connection: Any = None
        self.opened = False

    def on_open(self, connection: Any) -> None:
        self.opened = True
        for lane in range(self.parallel):
            connection.channel(on_open_callback=lambda ch, lane=lane: self.declare(ch, lane))

    def declare(self, channel: Any, lane: int) -> None:
        channel.add_on_close_callback(self.on_channel_closed)
        for client_id in self.ids[lane :: self.parallel]:
            topology.declare_client(channel, client_id, self.limits, callback=self.declared)

    def declared(self, _frame: Any) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.connection.close()

    def on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if self.remaining and self.error is None:
            self.error = translate(reason, "provisioning client queues")
            self.connection.close()

    def on_failed(self, connection: Any, reason: BaseException) -> None:
        if self.remaining and self.error is None:
            self.error = translate(reason, "provisioning client queues")
        connection.ioloop.stop()


def provision_clients(
    settings: BrokerSettings,
    client_ids: Sequence[str],
    limits: topology.QueueLimits | None = None,
    *,
    parallel: int = 16,
    timeout: float = 120.0,
) -> None:
    """Declare the command queues of ``client_ids``; raises a BrokerError on failure."""
    ids = list(dict.fromkeys(client_ids))
    for client_id in ids:
        topology.client_queue(client_id)  # validate all before declaring any
    if not ids:
        return
    ensure_placement(settings)  # on a cluster: spread the queues before declaring any
    named = settings.named(f"{settings.connection_name} (provisioning)")
    started = time.monotonic()
    for attempt, url in enumerate(node_order(named.urls), start=1):
        work = _Provisioning(ids, limits, parallel)
        _run(work, named.node(url), timeout)
        if work.error is None:
            break
        # A node that is down refuses the connection before anything was declared: the
        # next node in the list can do all of it.
        if work.opened or attempt == len(named.urls):
            raise work.error
        log.warning("provisioning: %s; trying the next node", work.error)
    log.info("provisioned %d client queue(s) in %.2f s", len(ids), time.monotonic() - started)


def _run(work: _Provisioning, settings: BrokerSettings, timeout: float) -> None:
    work.connection = connection = open_async(
        parameters(settings),
        on_open=work.on_open,
        on_open_error=work.on_failed,
        on_closed=work.on_failed,
    )

    def too_slow() -> None:
        work.error = ConfirmTimeout(f"provisioning: {work.remaining} queue(s) unanswered")
        connection.close()

    connection.ioloop.call_later(timeout, too_slow)
    try:
        connection.ioloop.start()
    finally:
        connection.ioloop.close()
