"""The dispatcher's metrics stay bounded whatever names reach them, and the database is
durable before the broker is told a message is safe."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from broker.settings import BrokerSettings, redact
from dispatcher.service.metrics import DispatcherMetrics
from dispatcher.store import db
from dispatcher.store.ledger_answers import Answered
from schemas.messages import Ack, PublishCount, PublishReport


def series(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def answered(component: str, event: str, status: str = "done") -> Answered:
    ack = Ack("c", "PC1", status, time.time(), "t", reason="signal-failed")
    return Answered(ack, component, event, None, "sent", time.time() - 1, time.time(), 1.0)


def test_names_outside_the_catalog_share_one_label() -> None:
    registry = CollectorRegistry()
    metrics = DispatcherMetrics(registry)
    metrics.answered(answered("NOPE0", "X"))
    metrics.publish_report(PublishReport("p", time.time(), (PublishCount("NOPE", "X", "sent", 1),)))
    grown = series(registry)
    for n in range(1, 300):
        metrics.answered(answered(f"NOPE{n}", f"X{n}"))
        metrics.publish_report(
            PublishReport("p", time.time(), (PublishCount(f"NOPE{n}", "X", "sent", 1),))
        )
    assert series(registry) == grown
    other = {"component": "other", "event": "other", "status": "done"}
    assert registry.get_sample_value("setevnt_command_outcomes_total", other) == 300
    catalog = {"component": "CCIM32", "event": "STARTCYCLE", "status": "done"}
    metrics.answered(answered("CCIM32", "STARTCYCLE"))
    assert registry.get_sample_value("setevnt_command_outcomes_total", catalog) == 1


def test_a_commit_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    connection = db.connect(db.DbSettings(str(tmp_path / "db")))
    try:
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        connection.close()
    assert sqlite3.connect(tmp_path / "db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_password_never_reaches_a_message() -> None:
    for url in ("amqp://u:s3cret@h:5672/%2F", "amqp://u:s3cret@h:99999/", "amqp//u:s3cret@h"):
        assert "s3cret" not in redact(url)
        try:
            BrokerSettings.from_env(url)
        except ValueError as exc:
            assert "s3cret" not in str(exc)
    assert BrokerSettings("amqp://u:s3cret@h/v").redacted() == "amqp://u:***@h/v"
