"""What a storm's clients answered, read back from the ledger on the storm's ledger thread.

The dispatcher service's collector consumes every ack, checks who sent it and records it
in the ledger; a storm reads its own commands' answers from there, so the broker routes
each ack once and the storm decodes none while it publishes (docs/performance.md), and
no answer is lost to a dropped connection.

The storm's ledger thread (:class:`dispatcher.store.ledger.LedgerWriter`) reads them after
each batch of the storm's own writes, every 0.25 s, on its connection: answers arrive
one collector flush (0.1 s) plus one storm flush later, well inside a delivery wait;
one thread for both needs no second connection. Each collector numbers the batches of
answers it writes, in the order they commit (:mod:`dispatcher.store.ledger_answers`),
so each read takes only the answers numbered above the last one it saw of that
collector: every answer once, however late a collector could write it down. Without a
running collector a storm sees no answers at all: its commands count ``pending-offline``
after the delivery wait, and their outcome reaches the ledger once ``setevnt-dispatcher
serve`` runs (``setevnt-dispatcher storm`` warns up front).
"""

from __future__ import annotations

import logging
from collections import deque

from dispatcher.store.ledger import Ledger, Status, StormAnswer

log = logging.getLogger(__name__)


class Answers:
    """A storm's answers as the collector records them.

    :meth:`read` on the storm's ledger thread, :meth:`drain` on its publishing thread,
    between confirms: a deque hands them over without a lock.
    """

    def __init__(self, storm_id: str) -> None:
        self._storm_id = storm_id
        self._answers: deque[StormAnswer] = deque()
        self._last: dict[int, int] = {}  # writer -> the number of its last batch read
        self._stopped = False

    def drain(self) -> list[StormAnswer]:
        """The answers read since the last call; each status change of a command once."""
        # As many as there are now: the ledger thread may append more meanwhile.
        take = self._answers.popleft
        return [take() for _ in range(len(self._answers))]

    def read(self, ledger: Ledger) -> None:
        """Take the answers numbered above the last one read."""
        if self._stopped:
            return
        try:
            rows = list(ledger.answers(self._storm_id, after=self._last))
        except Exception:
            # The storm goes on without answers: its commands count pending-offline
            # after the delivery wait, and the ledger still gets their real outcome.
            self._stopped = True
            log.exception("reading the storm's answers from the ledger stopped")
            return
        deferred = Status.DEFERRED.value
        last, answers = self._last, self._answers
        for writer, seq, command_id, status, received_at, latency, reason, detail in rows:
            if seq > last.get(writer, 0):
                last[writer] = seq
            answers.append(
                StormAnswer(
                    command_id, status, status != deferred, received_at, latency, reason, detail
                )
            )
