"""The request policy and the desk that decides on requests (no broker: SQLite only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.db import DbSettings
from dispatcher.idempotency import IdempotencyKeys
from dispatcher.ledger import Ledger
from dispatcher.policy import Policy
from dispatcher.registry import SqliteRegistry
from dispatcher.requests import Desk, options, summarize
from schemas.codec import encode
from schemas.messages import Heartbeat, RefusalReason, TriggerRequest
from schemas.refusals import RequestRefused

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
def desk(tmp_path: Path) -> Iterator[Desk]:
    database = DbSettings(str(tmp_path / "setevnt.db"))
    with (
        Ledger(database) as ledger,
        SqliteRegistry(database) as registry,
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
