"""An agent SIGKILLed again and again while commands keep arriving runs each exactly once.

A real ``setevnt-agent run`` process (simulated backend, each run takes a noticeable
time) is killed without warning at random moments and started again on the same
journal, while a dispatcher keeps sending. Whatever was in hand is redelivered to the
next run: a command whose run was cut short runs again (it never finished), one that
finished is answered from the journal. In the end every command has its final ``done``
ack, every repeated ack is the same answer, and the backend's record shows no command
finishing twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from dispatcher import Dispatcher, Receipt
from tests.faults.harness import AckTap
from tests.faults.tally import run_records, tally
from tests.integration.helpers import Process, start_agent

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLIENT = "PC001"
COMMANDS = 30
EVERY = 0.15  # seconds between two commands
RUN_SECONDS = 0.4  # each run: a kill usually lands in one
KILLS = 6


def send_commands(url: str, receipts: list[Receipt], errors: list[BaseException]) -> None:
    try:
        with Dispatcher(url) as dispatcher:
            for _ in range(COMMANDS):
                receipts += dispatcher.trigger([CLIENT], "CQMGR32_STARTCYCLE")
                time.sleep(EVERY)
    except BaseException as exc:  # reported by the test's thread
        errors.append(exc)


def test_an_agent_killed_repeatedly_runs_every_command_exactly_once(
    amqp_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision([CLIENT])
    tap = AckTap(amqp_url)

    def agent() -> Process:
        return start_agent(amqp_url, CLIENT, tmp_path, simulated={"duration": RUN_SECONDS})

    running = agent()
    receipts: list[Receipt] = []
    errors: list[BaseException] = []
    sender = threading.Thread(target=send_commands, args=(amqp_url, receipts, errors))
    kills = 0
    try:
        sender.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.2))
            running.kill()  # SIGKILL: no goodbye, nothing finished, nothing flushed
            kills += 1
            running = agent()
        sender.join(timeout=30)
        assert not errors, errors
        sent = {r.command_id for r in receipts}
        finals = tap.wait_finals(sent, timeout=60, alive=[running])
    finally:
        running.terminate()
        sender.join(timeout=30)
        tap.close()
    runs = run_records(tmp_path / f"{CLIENT}.record")
    finals_repeated = tap.finals()[1]
    result = tally(
        f"agent SIGKILLed {kills} times while {COMMANDS} commands arrived "
        f"(runs of {RUN_SECONDS} s, seed {seed})",
        sent=[r.command_id for r in receipts],
        confirmed=[r.command_id for r in receipts if r.sent],
        acked=finals,
        runs=runs,
        duplicate_acks=finals_repeated,
    ).show()
    assert len(receipts) == COMMANDS
    assert (result.lost, result.duplicate_executions) == (0, 0), result.table()
    assert result.statuses == {"done": COMMANDS}
    assert result.executed == COMMANDS
    assert result.interrupted >= 1, "no kill landed in a run: the test proved nothing"
    # An ack repeated after a redelivery is the journal's copy of the one answer.
    answers: dict[str, set[tuple[str, float | None]]] = defaultdict(set)
    for ack in tap.acks():
        if ack.final:
            answers[ack.command_id].add((ack.status, ack.started_at))
    assert all(len(a) == 1 for a in answers.values()), "one answer per command"
