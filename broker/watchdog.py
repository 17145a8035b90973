"""Leave for a restart when a broker loop stops coming back.

Every wait of a consuming loop is meant to be bounded: a pump by its time limit, a
blocked publish by ``blocked_connection_timeout``, a dead link by heartbeats. One is not:
pika's blocking ``basic_publish`` waits for the broker's confirm with no limit, and a
broker that keeps the connection alive but never sends that confirm holds the loop
forever (a quorum-queue publish lost when the link between nodes drops is one known
way, fixed upstream in rabbitmq-server#14589). Nothing then consumes, answers or stops;
the process looks alive and does nothing.

The watchdog bounds that and anything like it: each watched loop beats on every turn,
and once one has not beaten for the limit the watchdog logs where every thread waits and
ends the process with :data:`STALLED_EXIT`, for the service manager to start it again
(systemd ``Restart=on-failure``, the Windows service's recovery actions). A loop is
watched from its first beat until it is disarmed: waiting between sessions is the
supervisor's, and bounded.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STALLED_EXIT = 75  # EX_TEMPFAIL: a fresh start is expected to work
DEFAULT_STALL_TIMEOUT = 120.0  # beyond a blocked publish's 30 s and a few connection attempts
CHECK_EVERY = 1.0  # seconds between two looks; the bound is reached within that


class Watchdog:
    """One per process, started once; loops beat and disarm it from their own threads."""

    def __init__(
        self,
        limit: float,
        what: str,
        *,
        leave: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._what = what
        self._leave = leave
        self._clock = clock
        self._beats: dict[str, float] = {}  # loop -> its last beat, while armed
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    def beat(self, loop: str) -> None:
        """``loop`` came back (and is watched from now on)."""
        self._beats[loop] = self._clock()

    def disarm(self, loop: str) -> None:
        self._beats.pop(loop, None)

    def stalled(self) -> tuple[str, float] | None:
        """The loop that has not beaten for the limit, and for how long, if any."""
        now = self._clock()
        for loop, last in list(self._beats.items()):
            if now - last >= self.limit:
                return loop, now - last
        return None

    def _watch(self) -> None:
        while not self._closed.wait(min(CHECK_EVERY, self.limit)):
            stalled = self.stalled()
            if stalled is not None:
                self._bite(*stalled)
                return

    def _bite(self, loop: str, seconds: float) -> None:
        log.critical(
            "%s: the %s loop has not come back for %.0f s (stall timeout %.0f s): exiting "
            "with status %d for the service manager to restart it; every thread's stack "
            "follows",
            self._what,
            loop,
            seconds,
            self.limit,
            STALLED_EXIT,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass  # no real stderr (a Windows service): the log line above says it all
        self._leave(STALLED_EXIT)
