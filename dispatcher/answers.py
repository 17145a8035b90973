"""What a storm's clients answered, read back from the ledger on a thread of its own.

The dispatcher service's collector consumes every ack, checks who sent it and records it
in the ledger; a storm reads its own commands' answers from there. It used to bind a
private copy of the fleet's acks instead, which cost the broker a second routing and
delivery of every ack, and the storm a pika delivery and a decode per command, in the
middle of its publishing on the same two cores (bench/storm.py: ~0.3 s more CPU per
10,000 commands in the storm's process). Nor does the ledger lose answers to a dropped
connection.

Answers arrive one collector flush (0.1 s) plus one poll later, well inside a delivery
wait. The collector numbers each batch of answers it writes, in the order the batches
commit (:meth:`dispatcher.ledger.Ledger.record_acks`), so each poll reads only the
answers numbered above the last one it saw: every answer once, however late the
collector could write it down. Without a running collector a storm sees no answers at
all: its commands count ``pending-offline`` after the delivery wait, and their outcome
reaches the ledger once ``setevnt-dispatcher serve`` runs (``setevnt-dispatcher storm``
warns up front).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from dispatcher.db import DbSettings
from dispatcher.ledger import Answer, Ledger, Status

log = logging.getLogger(__name__)

POLL_EVERY = 0.25


class Answers:
    """A storm's answers as the collector records them; :meth:`drain` between confirms."""

    def __init__(self, database: DbSettings, storm_id: str, *, every: float = POLL_EVERY):
        self._database = database
        self._storm_id = storm_id
        self._every = every
        self._answers: deque[Answer] = deque()
        self._last = 0  # the number of the last batch of answers read
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="storm-answers", daemon=True)

    def begin(self) -> None:
        """Open the ledger on the reading thread; see :meth:`wait_ready`."""
        self._thread.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            self.close()
            raise TimeoutError("timed out opening the ledger for the storm's answers")
        if self._error is not None:
            self.close()
            raise self._error

    def drain(self) -> list[Answer]:
        """The answers read since the last call; each status change of a command once."""
        answers = []
        while self._answers:
            answers.append(self._answers.popleft())
        return answers

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        try:
            ledger = Ledger(self._database, create=False)
        except BaseException as exc:  # reported by wait_ready
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.wait(self._every):
                self._read(ledger)
            self._read(ledger)  # what came in since the last poll
        except Exception:
            # The storm goes on without answers: its commands count pending-offline
            # after the delivery wait, and the ledger still gets their real outcome.
            log.exception("reading the storm's answers from the ledger stopped")
        finally:
            ledger.close()

    def _read(self, ledger: Ledger) -> None:
        last = self._last
        for seq, command_id, status, received_at, latency, reason, detail in ledger.answers(
            self._storm_id, after=self._last
        ):
            last = max(last, seq)
            final = status != Status.DEFERRED
            self._answers.append(
                Answer(command_id, status, final, received_at, latency, reason, detail)
            )
        self._last = last
