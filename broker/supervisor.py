"""Keep a broker session alive: rebuild it after connection loss, stop on refusal.

The shape of pika's reconnecting-consumer example: an outer loop reruns the session after
a capped, fully jittered backoff. Connection errors are retried; a refusal by the broker
(bad credentials, access refused) ends the loop with a logged decision, because
retrying the same thing will not help.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from broker.errors import BrokerRefused, ConnectionLost

log = logging.getLogger(__name__)

# 404: the queue does not exist yet because the dispatcher has not provisioned this
# client, or (on a cluster) its home node is down; either is worth waiting for.
RETRYABLE_REFUSALS = frozenset({404})


def supervise(
    session: Callable[[], None],
    stopping: Callable[[], bool],
    *,
    what: str,
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    healthy_after: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run ``session`` until it returns normally or ``stopping()`` is true."""
    delay = initial_delay
    while not stopping():
        started = time.monotonic()
        try:
            session()
            return
        except ConnectionLost as exc:
            log.warning("%s: connection lost (%s)", what, exc)
        except BrokerRefused as exc:
            if exc.code not in RETRYABLE_REFUSALS:
                log.error("%s: broker refused, giving up: %s", what, exc)
                raise
            waiting = "for its node" if "home node" in str(exc) else "to be provisioned"
            log.warning("%s: %s; waiting %s", what, exc, waiting)
        if time.monotonic() - started > healthy_after:
            delay = initial_delay  # the session had been fine: start the backoff over
        pause = random.uniform(delay / 2, delay)
        log.info("%s: reconnecting in %.1f s", what, pause)
        _sleep_unless_stopping(pause, stopping, sleep)
        delay = min(delay * 2, max_delay)


def _sleep_unless_stopping(
    seconds: float, stopping: Callable[[], bool], sleep: Callable[[float], None]
) -> None:
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        sleep(min(left, 0.2))
