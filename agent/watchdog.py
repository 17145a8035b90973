"""Leave for a restart when the broker loop stops coming back.

Every wait of the agent's I/O thread is meant to be bounded: a pump by its time limit,
a blocked publish by ``blocked_connection_timeout``, a dead link by heartbeats. One is
not: pika's blocking ``basic_publish`` waits for the broker's confirm with no limit, and
a broker that keeps the connection alive but never sends that confirm holds it forever
(a quorum-queue publish lost in a node failure is one known way: rabbitmq-server#14589).
Nothing then consumes, answers or stops; the agent looks alive and does nothing.

The watchdog bounds that and anything like it: the session beats on every turn of its
loop, and once it has not beaten for ``stall_timeout`` the watchdog logs where every
thread waits and ends the process with :data:`STALLED_EXIT`, for the service manager to
start it again (systemd ``Restart=on-failure``, the Windows service's recovery actions).
Nothing is lost: an unsettled delivery comes back, and the journal answers what already
ran.
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
CHECK_EVERY = 1.0  # seconds between two looks; the bound is reached within that


class Watchdog:
    """Started once; armed while a session runs, idle between sessions."""

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
        self._last: float | None = None  # None: disarmed
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    def beat(self) -> None:
        """The loop came back (and arms the watchdog)."""
        self._last = self._clock()

    def disarm(self) -> None:
        """No session: waiting between attempts is the supervisor's, and bounded."""
        self._last = None

    def stalled_for(self) -> float | None:
        last = self._last
        if last is None:
            return None
        stalled = self._clock() - last
        return stalled if stalled >= self.limit else None

    def _watch(self) -> None:
        while not self._closed.wait(min(CHECK_EVERY, self.limit)):
            stalled = self.stalled_for()
            if stalled is not None:
                self._bite(stalled)
                return

    def _bite(self, stalled: float) -> None:
        log.critical(
            "%s: the broker loop has not come back for %.0f s (stall_timeout %.0f s): "
            "exiting with status %d for the service manager to restart it; every "
            "thread's stack follows",
            self._what,
            stalled,
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
