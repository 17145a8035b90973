"""The Windows service's life mapped onto the agent's: start runs it, stop is its graceful stop.

Plain Python, so that Linux tests drive it: ``agent.windows.service`` (pywin32) only
forwards the service control manager's calls here. Stop may come before the agent is
built, while it connects, or while it signals; in each case the agent finishes the
command in hand and ``run`` returns, which the framework reports as "stopped".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from agent.backends import BackendConfigError
from agent.config import ConfigError
from agent.files import UnsafeFile
from agent.guard import GuardConfigError
from broker.errors import BrokerError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2  # as `setevnt-agent run`: the config or state cannot work
EXIT_BROKER = 3
REFUSED = (ConfigError, BackendConfigError, GuardConfigError, UnsafeFile, OSError)


class Daemon(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


class ServiceRunner:
    def __init__(self, build: Callable[[], Daemon]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._daemon: Daemon | None = None
        self._stopping = False

    def run(self) -> int:
        """Build and run the agent until stopped; the status the service exits with."""
        try:
            daemon = self._build()
        except REFUSED as exc:
            log.error("setevnt-agent service cannot start: %s", exc)
            return EXIT_CONFIG
        with self._lock:
            if self._stopping:
                return EXIT_OK
            self._daemon = daemon
        try:
            daemon.run()
        except BrokerError as exc:
            log.error("setevnt-agent service: broker: %s", exc)
            return EXIT_BROKER
        return EXIT_OK

    def stop(self) -> None:
        """The service control manager's stop: finish the command in hand, then leave."""
        with self._lock:
            self._stopping = True
            daemon = self._daemon
        if daemon is not None:
            log.info("service stop: finishing the command in hand, then exiting")
            daemon.stop()
