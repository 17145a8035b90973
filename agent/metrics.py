"""The agent's own /metrics, off by default.

Clients often sit behind NAT, so the fleet view comes from the dispatcher; this is for a
site that can scrape its clients. prometheus_client is imported only when it is turned
on, so an agent without it keeps its small footprint.

Label values stay bounded whatever is sent: an ack names the component and event the
command claimed, which for a refused command can be anything, so a pair outside this
agent's catalog is counted as ``other``; statuses are the ack's fixed set.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas.catalog import DEFAULT_CATALOG, Catalog
from schemas.codec import DecodeError, decode
from schemas.messages import Ack

log = logging.getLogger(__name__)

OTHER = "other"


class AgentMetrics:
    def __init__(
        self, port: int, addr: str = "127.0.0.1", catalog: Catalog = DEFAULT_CATALOG
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self._catalog = catalog
        self.registry = CollectorRegistry()
        self._answers = Counter(
            "setevnt_agent_answers_total",
            "Acks this agent sent, by component, event and status.",
            ["component", "event", "status"],
            registry=self.registry,
        )
        self._run = Histogram(
            "setevnt_agent_component_run_seconds",
            "How long components took to run events on this client.",
            ["component", "event"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=self.registry,
        )
        self._poisoned = Counter(
            "setevnt_agent_poisoned_deliveries_total",
            "Deliveries the agent could not handle at all, dead-lettered without an answer.",
            registry=self.registry,
        )
        self._server: Any
        self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("agent metrics on http://%s:%d/metrics", addr, self.port)

    def answered(self, body: bytes) -> None:
        try:
            ack = decode(body, Ack)
        except DecodeError:  # our own ack; cannot happen, and metrics must not break acks
            return
        component, event = self._labels(ack)
        self._answers.labels(component, event, ack.status).inc()
        if ack.run_seconds is not None:
            self._run.labels(component, event).observe(ack.run_seconds)

    def poisoned(self) -> None:
        self._poisoned.inc()

    def _labels(self, ack: Ack) -> tuple[str, str]:
        known = self._catalog.component(ack.component) if ack.component else None
        if known is None or ack.event not in known.events:
            return OTHER, OTHER
        return known.name, str(ack.event)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
