"""Logging set-up and broker errors shared by the command-line entry points, and
throttled warnings."""

from __future__ import annotations

import logging
import time

from broker.connection import explain
from broker.errors import BrokerError
from broker.settings import BrokerSettings
from schemas import cli


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pika narrates socket events and logs every failed connection attempt with a
    # traceback; setevnt reports those failures itself, in one line. Debug shows all.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL
    logging.getLogger("pika").setLevel(quiet)


def broker_errors(url: str | None) -> cli.Explain:
    """For :func:`schemas.cli.run`: a broker error as one line naming the broker."""

    def explain_error(exc: Exception) -> tuple[str, int] | None:
        if not isinstance(exc, BrokerError):
            return None
        try:
            settings = BrokerSettings.from_env(url)
        except ValueError:
            return str(exc), cli.EXIT_BROKER
        return explain(exc, settings), cli.EXIT_BROKER

    return explain_error


class Throttled:
    """Warnings about what peers send, at most one line per kind every ``every`` seconds.

    A compromised client can send a million bad messages; each is counted in the metrics,
    but the log gets a line per kind now and then, saying how many were not logged.
    """

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log = logger
        self._every = every
        self._next: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        quiet = self._quiet.pop(kind, 0)
        suffix = f" ({quiet} more like it not logged)" if quiet else ""
        self._log.warning(message + suffix, *args)
        self._next[kind] = now + self._every
