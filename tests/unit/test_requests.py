"""The request policy and the desk that decides on requests (no broker: SQLite only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.service.policy import Limits, Policy
from dispatcher.service.quotas import Quotas
from dispatcher.service.requests import Desk, options, summarize
from dispatcher.store.db import DbSettings
from dispatcher.store.idempotency import IdempotencyKeys
from dispatcher.store.ledger import Ledger
from dispatcher.store.registry import StoreRegistry
from schemas.codec import encode
from schemas.messages import Heartbeat, RefusalReason, TriggerRequest
from schemas.refusals import RequestRefused
from tests.databases import query

POLICY = {
    "users": {
        "helpdesk": {"events": ["*_STARTCYCLE"], "targets": ["client"], "max_targets": 1},
        "ops": {"events": ["*"], "targets": ["client", "group", "all"], "max_targets": 5},
    }
}


def refused(call: object, *args: object) -> RefusalReason:
    with pytest.raises(RequestRefused) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.reason


@pytest.mark.parametrize(
    ("user", "request_", "allowed"),
    [
        ("helpdesk", TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC1",)), True),
        ("helpdesk", TriggerRequest(event="CLISVCL_CLOSE", clients=("PC1",)), False),
        ("helpdesk", TriggerRequest(event="CCIM32_STARTCYCLE", groups=("lab",)), False),
        ("helpdesk", TriggerRequest(event="CCIM32_STARTCYCLE", all=True), False),
        ("helpdesk", TriggerRequest(event="CCIM32_STARTCYCLE", clients=("a",), force=True), False),
        ("ops", TriggerRequest(event="CLISVCL_CLOSE", all=True), True),
        ("ops", TriggerRequest(event="CCIM32_STARTCYCLE", clients=("a",), force=True), False),
        ("nobody", TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC1",)), False),
    ],
)
def test_policy_allows_only_what_a_rule_lists(
    user: str, request_: TriggerRequest, allowed: bool
) -> None:
    policy = Policy.from_data(POLICY)
    if allowed:
        policy.authorize(user, request_)
    else:
        assert refused(policy.authorize, user, request_) is RefusalReason.NOT_PERMITTED


def test_policy_counts_and_defaults() -> None:
    policy = Policy.from_data(POLICY)
    policy.authorize_count("ops", 5)
    assert refused(policy.authorize_count, "ops", 6) is RefusalReason.NOT_PERMITTED
    anything = TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC1",))
    assert refused(Policy({}).authorize, "ops", anything) is RefusalReason.NOT_PERMITTED


@pytest.mark.parametrize(
    "data",
    [
        {"users": {"x": {"events": "*"}}},
        {"users": {"x": {"targets": ["clients"]}}},
        {"users": {"x": {"max_targets": -1}}},
        {"users": {"x": {"force": "yes"}}},
        {"users": {"x": {"event": ["*"]}}},
        {"rules": {}},
    ],
)
def test_policy_refuses_bad_files(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="policy"):
        Policy.from_data(data)


def test_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[users.ops]\nevents = ["*"]\ntargets = ["all"]\nmax_targets = 9\n')
    monkeypatch.setenv("SETEVNT_POLICY_FILE", str(path))
    assert Policy.load().rules["ops"].max_targets == 9
    path.write_text("[users.ops\n")
    with pytest.raises(ValueError, match=str(path)):
        Policy.load()


@pytest.fixture
def desk(store_db: DbSettings) -> Iterator[Desk]:
    database = store_db
    with (
        Ledger(database) as ledger,
        StoreRegistry(database) as registry,
        IdempotencyKeys(database, window=60) as keys,
    ):
        beat = Heartbeat(
            client_id="PC1", kind="hello", sent_at=time.time(), platform="nt", agent_version="1"
        )
        registry.record([(beat, time.time())])
        yield Desk(Policy.from_data(POLICY), ledger, registry, keys)


def test_desk_plans_a_storm_and_replays_a_key(desk: Desk) -> None:
    body = encode(TriggerRequest(event="CCIM32_STARTCYCLE", all=True, idempotency_key="k"))
    first = desk.decide(body, "ops")
    again = desk.decide(body, "ops")
    assert (first.targets, first.replayed, again.replayed) == (1, False, True)
    assert again.storm_id == first.storm_id
    assert len(desk.ledger.storms()) == 1
    assert desk.decide(encode(TriggerRequest(event="CCIM32_STARTCYCLE", all=True)), "ops")
    assert len(desk.ledger.storms()) == 2  # without a key every request runs
    summary = summarize(desk.ledger, first.storm_id)
    assert (summary.targets, summary.counts) == (1, {"planned": 1})


def test_desk_keys_expire(desk: Desk) -> None:
    desk.keys.remember("ops", "k", "storm-old", 1, time.time() - 61)
    body = encode(TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC1",), idempotency_key="k"))
    assert not desk.decide(body, "ops").replayed


@pytest.mark.parametrize(
    ("request_", "user", "reason"),
    [
        (TriggerRequest(event="CCIM32_STARTCYCLE", clients=("PC1",)), None, "no-user-id"),
        (TriggerRequest(event="CCIM32_EXPLODE", clients=("PC1",)), "ops", "unknown-event"),
        (TriggerRequest(event="CCIM32_STARTCYCLE", groups=("none",)), "ops", "unknown-target"),
        (
            TriggerRequest(event="CCIM32_STARTCYCLE", clients=tuple("abcdef")),
            "ops",
            "not-permitted",
        ),
    ],
)
def test_desk_refuses(desk: Desk, request_: TriggerRequest, user: str | None, reason: str) -> None:
    assert refused(desk.decide, encode(request_), user) == reason
    assert desk.ledger.storms() == []


def test_request_options_default_like_a_storm() -> None:
    chosen = options(TriggerRequest(event="CCIM32_STARTCYCLE", all=True, rate=50, max_errors=0))
    assert (chosen.rate, chosen.ttl, chosen.delivery_wait, chosen.spread) == (50, 3600, 30, 0)
    assert chosen.max_errors is not None and chosen.max_errors.of(100) == 0


# -- caps and quotas ----------------------------------------------------------------------

LIMITED = {
    "limits": {"max_ttl": "2h", "max_spread": "10m", "max_delivery_wait": "1m"},
    "users": {
        "ops": {
            "events": ["*"],
            "targets": ["client", "all"],
            "max_targets": 100,
            "max_rate": "10/s",
        },
        "batch": {
            "events": ["*"],
            "targets": ["client"],
            "max_targets": 100,
            "max_requests": 2,
            "max_targets_per_window": 5,
            "window": "1h",
        },
    },
}


@pytest.fixture
def limited(desk: Desk) -> Desk:
    desk.policy = Policy.from_data(LIMITED)
    return desk


def request(**fields: object) -> bytes:
    return encode(TriggerRequest(event="CCIM32_STARTCYCLE", **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"ttl": 1e8}, "ttl 1157d9h46m40s is above max_ttl 2h"),
        ({"ttl": 7201.0}, "ttl 2h1s is above max_ttl 2h"),
        ({"spread": 601.0, "ttl": 3600.0}, "spread 10m1s is above max_spread 10m"),
        ({"delivery_wait": 1e9}, "delivery_wait 11574d1h46m40s is above max_delivery_wait 1m"),
        ({"rate": 11.0}, "rate 11/s is above max_rate 10/s"),
        ({"rate": 0.01, "clients": tuple(f"PC{n}" for n in range(8))}, "over 11m40s, above max"),
    ],
)
def test_values_above_a_cap_are_over_limit(
    limited: Desk, fields: dict[str, object], says: str
) -> None:
    body = request(**{"clients": ("PC1",), **fields})
    with pytest.raises(RequestRefused) as refused:
        limited.decide(body, "ops")
    assert refused.value.reason is RefusalReason.OVER_LIMIT
    assert says in refused.value.detail
    assert limited.ledger.storms() == []
    limited.decide(request(clients=("PC1",), ttl=7200.0, delivery_wait=60.0), "ops")  # at the cap


def test_quotas_refuse_rate_limited_until_the_window_passes(limited: Desk) -> None:
    first = limited.decide(request(clients=("PC1", "PC2"), idempotency_key="k1"), "batch")
    limited.decide(request(clients=("PC3",)), "batch")
    with pytest.raises(RequestRefused) as refused:
        limited.decide(request(clients=("PC4",)), "batch")
    assert refused.value.reason is RefusalReason.RATE_LIMITED
    assert "batch may make max_requests 2 per 1h: retry in 59m5" in refused.value.detail
    replay = limited.decide(request(clients=("PC1", "PC2"), idempotency_key="k1"), "batch")
    assert replay.replayed and replay.storm_id == first.storm_id, "a replay spends nothing"
    limited.decide(request(clients=("PC1",)), "ops")  # quotas are per requester
    assert len(limited.ledger.storms()) == 3


def test_target_quota_and_a_request_larger_than_the_window(limited: Desk) -> None:
    limited.decide(request(clients=("PC1", "PC2", "PC3")), "batch")
    with pytest.raises(RequestRefused) as refused:
        limited.decide(request(clients=("PC4", "PC5", "PC6")), "batch")
    assert refused.value.reason is RefusalReason.RATE_LIMITED
    detail = refused.value.detail
    assert "max_targets_per_window 5 clients per 1h (3 so far, this request 3)" in detail
    with pytest.raises(RequestRefused) as too_big:
        limited.decide(request(clients=tuple(f"PC{n}" for n in range(6))), "batch")
    assert too_big.value.reason is RefusalReason.OVER_LIMIT
    assert "6 targets are more than max_targets_per_window 5 (per 1h)" in too_big.value.detail


def test_quotas_slide_with_the_window() -> None:
    quotas, limits = Quotas(), Limits(max_requests=2, max_targets_per_window=10, window=60)
    quotas.spend("a", 4, 1000.0)
    quotas.spend("a", 5, 1030.0)
    for check in (
        lambda: quotas.check_requests("a", limits, 1059.0),
        lambda: quotas.check_targets("a", 2, limits, 1059.0),
    ):
        with pytest.raises(RequestRefused, match="retry in 1s"):
            check()
    quotas.check_requests("a", limits, 1060.0)  # the first left the window
    quotas.check_targets("a", 5, limits, 1060.0)
    with pytest.raises(RequestRefused, match="retry in 30s"):
        quotas.check_targets("a", 6, limits, 1060.0)


def test_options_take_their_defaults_within_the_caps() -> None:
    capped = Limits(max_ttl=1800, max_spread=60, max_delivery_wait=10, max_rate=25)
    chosen = options(TriggerRequest(event="CCIM32_STARTCYCLE", all=True), capped)
    assert (chosen.rate, chosen.ttl, chosen.delivery_wait) == (25, 1800, 10)
    chosen = options(TriggerRequest(event="CCIM32_STARTCYCLE", all=True))
    assert (chosen.rate, chosen.ttl, chosen.delivery_wait) == (1000, 3600, 30)


def test_a_database_failure_is_unavailable_not_a_crash(desk: Desk, store_db: DbSettings) -> None:
    query(store_db, "DROP TABLE request_keys")
    query(store_db, "DROP TABLE client_groups")
    keyed = request(clients=("PC1",), idempotency_key="k")
    assert refused(desk.decide, keyed, "ops") is RefusalReason.UNAVAILABLE
    assert refused(desk.decide, request(groups=("lab",)), "ops") is RefusalReason.UNAVAILABLE


def test_no_spread_allowed_still_allows_requests_at_the_policys_pace(desk: Desk) -> None:
    desk.policy = Policy.from_data(
        {
            "limits": {"max_spread": 0, "max_rate": "2/s"},
            "users": {"ops": {"events": ["*"], "targets": ["client"], "max_targets": 9}},
        }
    )
    five = tuple(f"PC{n}" for n in range(5))
    assert desk.decide(request(clients=five), "ops").targets == 5  # 2 s at max_rate
    with pytest.raises(RequestRefused) as refused:
        desk.decide(request(clients=five, rate=1.0), "ops")
    assert refused.value.reason is RefusalReason.OVER_LIMIT
    assert "rate 1/s publishes 5 commands over 4s, above max_spread 0s" in refused.value.detail
    with pytest.raises(RequestRefused, match="spread 1s is above max_spread 0s"):
        desk.decide(request(clients=five, spread=1.0), "ops")
