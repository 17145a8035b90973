"""Storm leases: a compare-and-set in the database that exactly one dispatcher wins."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from dispatcher.service.takeover import Takeover
from dispatcher.store.db import DbSettings
from dispatcher.store.leases import LEASE, RESUMED, Leases, owner_gone, owner_id
from dispatcher.store.ledger import Ledger, StormRecord
from dispatcher.store.owed import Owed
from dispatcher.storms.lease_watch import LeaseWatch

RACERS = 8
ROUNDS = 20


def storm(storm_id: str, owner: str, heartbeat_at: float, state: str = "running") -> StormRecord:
    return StormRecord(
        storm_id, "CCIM32", "STARTCYCLE", {}, 0, state, "why", "ops", heartbeat_at, None,
        heartbeat_at, owner, False,
    )  # fmt: skip


def _race(path: str, owner: str, start: float, won: multiprocessing.Queue[tuple[str, str]]) -> None:
    """One dispatcher: at ``start``, try to claim every storm of the test."""
    with Leases(DbSettings(path)) as leases:
        while time.time() < start:
            time.sleep(0.001)
        for n in range(ROUNDS):
            if leases.claim(f"s{n}", owner, time.time()):
                won.put((f"s{n}", owner))


def test_owners_racing_for_expired_leases_each_storm_goes_to_exactly_one(
    store_db: DbSettings,
) -> None:
    path = store_db.path
    dead = time.time() - LEASE - 5
    with Ledger(DbSettings(path)) as ledger:
        for n in range(ROUNDS):
            state = "interrupted" if n % 2 else "running"
            ledger.create_storm(storm(f"s{n}", "pid 1 on gone-host #dead", dead, state), [])
    context = multiprocessing.get_context("spawn")
    won: multiprocessing.Queue[tuple[str, str]] = context.Queue()
    start = time.time() + 2.0  # every racer connected and waiting by then
    racers = [
        context.Process(target=_race, args=(path, f"pid {n} on racer #{n}", start, won))
        for n in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    winners: dict[str, list[str]] = {}
    while not won.empty():
        storm_id, owner = won.get()
        winners.setdefault(storm_id, []).append(owner)
    assert sorted(winners) == sorted(f"s{n}" for n in range(ROUNDS))
    assert all(len(owners) == 1 for owners in winners.values()), winners
    with Ledger(DbSettings(path)) as ledger:
        for storm_id, owners in winners.items():
            record = ledger.storm(storm_id)
            assert record is not None
            assert (record.owner, record.state, record.reason) == (owners[0], "running", None)


def test_a_fresh_lease_is_kept_from_others_and_renewed_by_its_owner(store_db: DbSettings) -> None:
    database = store_db
    now = time.time()
    with Ledger(database) as ledger, Leases(database) as leases:
        ledger.create_storm(storm("s", "pid 1 on a #a", now), [])
        assert not leases.claim("s", "pid 2 on b #b", now + 1)
        assert leases.claim("s", "pid 1 on a #a", now + 1)  # its owner, again
        assert leases.renew(["s", "other"], "pid 1 on a #a", now + LEASE) == {"other"}
        assert not leases.claim("s", "pid 2 on b #b", now + LEASE + 1)  # renewed
        assert leases.claim("s", "pid 2 on b #b", now + 2 * LEASE + 1)  # ran out
        assert leases.renew(["s"], "pid 1 on a #a", now + 2 * LEASE + 2) == {"s"}
        assert leases.holder("s") == "pid 2 on b #b"


def test_an_owner_seen_dead_is_taken_over_at_once_but_only_as_seen(store_db: DbSettings) -> None:
    database = store_db
    now = time.time()
    with Ledger(database) as ledger, Leases(database) as leases:
        ledger.create_storm(storm("s", "pid 1 on a #a", now), [])
        seen = ledger.storm("s")
        assert seen is not None
        assert leases.claim("s", "pid 2 on b #b", now + 1, seen=seen)
        # A third dispatcher that saw the same dead owner finds the row changed.
        assert not leases.claim("s", "pid 3 on c #c", now + 1, seen=seen)
        assert leases.holder("s") == "pid 2 on b #b"


@pytest.mark.parametrize(
    ("state", "taken", "resumed"),
    [("failed", False, True), ("done", False, False), ("cancelled", False, False)],
)
def test_only_runs_that_did_not_end_are_taken_over(
    store_db: DbSettings, state: str, taken: bool, resumed: bool
) -> None:
    database = store_db
    old = time.time() - 2 * LEASE
    with Ledger(database) as ledger, Leases(database) as leases:
        ledger.create_storm(storm("s", "pid 1 on a #a", old, state), [])
        assert leases.claim("s", "pid 2 on b #b", time.time()) == taken
        assert leases.claim("s", "pid 2 on b #b", time.time(), states=RESUMED) == resumed


def test_owner_ids_are_unique_per_process_and_tell_a_dead_process() -> None:
    mine = owner_id()
    assert mine == owner_id() and mine.startswith("pid ")
    assert not owner_gone(mine)
    assert owner_gone(mine.replace(mine.split()[1], "999999999", 1))
    assert not owner_gone("pid 999999999 on some-other-host #x")  # only its lease says


class _Adopted:
    def __init__(self) -> None:
        self.storms: list[str] = []

    def adopt(self, storm_id: str, why: str) -> None:
        self.storms.append(storm_id)


def test_takeover_takes_owed_storms_whose_lease_ran_out_and_nothing_else(
    store_db: DbSettings,
) -> None:
    database = store_db
    now = time.time()
    stale, fresh = now - LEASE - 1, now - 1
    rows = {
        "dead-running": storm("dead-running", "pid 1 on a #a", stale),
        "live-running": storm("live-running", "pid 1 on a #a", fresh),
        "let-go": storm("let-go", "pid 1 on a #a", fresh, "interrupted"),
        "done-unsummarized": storm("done-unsummarized", "pid 1 on a #a", stale, "done"),
        "done-summarizing": storm("done-summarizing", "pid 1 on a #a", fresh, "done"),
        "operators": storm("operators", "pid 1 on a #a", stale),  # not owed: `resume`'s
    }
    adopted = _Adopted()
    with Ledger(database) as ledger, Leases(database) as leases, Owed(database) as owed:
        for storm_id, record in rows.items():
            ledger.create_storm(record, [])
            if storm_id != "operators":
                owed.add(storm_id, None, now)
        won = Takeover(database, adopted).scan(ledger, leases, owed, now)
        assert sorted(won) == ["dead-running", "done-unsummarized", "let-go"]
        assert adopted.storms == won
        assert Takeover(database, _Adopted()).scan(ledger, leases, owed, now) == []
        for storm_id in won:
            record = ledger.storm(storm_id)
            assert record is not None and record.owner == owner_id()
        done = ledger.storm("done-unsummarized")
        assert done is not None and done.state == "done"


def test_a_run_sees_its_storm_taken_over(store_db: DbSettings) -> None:
    database = store_db
    old = time.time() - 2 * LEASE
    with Ledger(database) as ledger, Leases(database) as leases:
        ledger.create_storm(storm("s", "pid 1 on a #a", old), [])
        watch = LeaseWatch("s", "pid 1 on a #a")
        assert watch.check(ledger) is None
        assert leases.claim("s", "pid 2 on b #b", time.time())
        watch = LeaseWatch("s", "pid 1 on a #a")
        assert watch.check(ledger) == "taken over by pid 2 on b #b"


def test_operators_storms_are_taken_over_only_when_asked_and_never_remediation(
    store_db: DbSettings,
) -> None:
    database = store_db
    stale = time.time() - LEASE - 1
    with Ledger(database) as ledger, Leases(database) as leases, Owed(database) as owed:
        ledger.create_storm(storm("cli", "pid 1 on a #a", stale), [])
        upgrade = StormRecord(
            "drift", "CLISETUP", "STARTCYCLE", {}, 0, "running", None,
            "drift-remediation to V2", stale, None, stale, "pid 1 on a #a", False,
        )  # fmt: skip
        ledger.create_storm(upgrade, [])
        assert sorted(leases.candidates(time.time())) == ["cli", "drift"]
        assert Takeover(database, _Adopted()).scan(ledger, leases, owed, time.time()) == []
        operators = _Adopted()
        takeover = Takeover(database, _Adopted(), operators=operators)
        assert takeover.scan(ledger, leases, owed, time.time()) == ["cli"]
        assert operators.storms == ["cli"]
