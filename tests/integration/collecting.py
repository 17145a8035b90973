"""A real collector with its recorder on a test's own database, on a background thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from broker.settings import BrokerSettings
from dispatcher.service.collector import Collector
from dispatcher.service.metrics import DispatcherMetrics
from dispatcher.service.recorder import Recorder
from dispatcher.service.senders import Senders
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import StoreRegistry


@dataclass(frozen=True)
class Collecting:
    registry: CollectorRegistry  # the metrics
    database: DbSettings

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def collecting(
    amqp_url: str, tmp_path: Path, senders: Senders | None = None
) -> Iterator[Collecting]:
    """A collector consuming the ack and fleet queues of ``amqp_url``'s vhost until the
    block ends; ``senders`` default: guest may answer for any client and is a dispatcher."""
    settings = BrokerSettings(url=amqp_url)
    database = DbSettings(str(tmp_path / "collector.db"))
    registry = CollectorRegistry()
    metrics = DispatcherMetrics(registry)
    chosen = senders or Senders(trusted=frozenset({"guest"}), dispatchers=frozenset({"guest"}))
    with StoreRegistry(database) as fleet, Ledger(database) as ledger:
        recorder = Recorder(settings, fleet, ledger, metrics)
        collector = Collector(settings, metrics, recorder, senders=chosen)
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        try:
            assert collector.ready.wait(10), "collector did not start consuming"
            yield Collecting(registry, database)
        finally:
            collector.stop()
            thread.join(10)
