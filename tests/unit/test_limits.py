"""Durations, the broker's limits on a storm's ttl, and the policy's [limits] (no broker)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dispatcher.api.dispatcher import Dispatcher
from dispatcher.cli.main import main
from dispatcher.service.policy import Limits, Policy
from dispatcher.storms.storm import MAX_EXPIRATION, QUEUE_TTL, StormOptions
from schemas.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("250ms", 0.25),
        ("5m", 300),
        ("2h", 7200),
        ("1.5d", 129600),
        ("1h30m", 5400),
        ("1m30s", 90),
        (" 1d 2h ", 93600),
        ("2h0m15s500ms", 7215.5),
    ],
)
def test_durations_old_and_compound(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1y", "30m1h", "1h1h", "1h30", "h", "-5s", "9" * 400])
def test_durations_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_queue_ttl_and_expiration_limit_are_the_brokers() -> None:
    assert QUEUE_TTL == 24 * 3600  # broker.topology.QueueLimits
    assert MAX_EXPIRATION * 1000 == 2**32 - 1
    assert format_duration(QUEUE_TTL) == "1d"


@pytest.mark.parametrize(
    ("ttl", "says"),
    [
        (QUEUE_TTL + 1, "longer than the client queues' message TTL (1d)"),
        (1e8, "above RabbitMQ's per-message expiration limit (49d17h2m47.295s)"),
        (float("inf"), "--ttl and --delivery-wait positive"),
    ],
)
def test_storm_options_refuse_a_ttl_the_broker_cannot_keep(ttl: float, says: str) -> None:
    StormOptions(ttl=QUEUE_TTL)  # the longest a command lives in its queue
    with pytest.raises(ValueError) as refused:
        StormOptions(ttl=ttl)
    assert says in str(refused.value)


def test_storm_refuses_a_long_ttl_before_anything_is_planned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SETEVNT_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2F")  # no broker
    database = tmp_path / "setevnt.db"
    argv = ["storm", "CCIM32_STARTCYCLE", "--client", "PC1", "--db", str(database)]
    assert main([*argv, "--ttl", "30d"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("setevnt-dispatcher: error: --ttl 30d is longer than")
    assert "\n" not in error and "Traceback" not in error
    assert not database.exists()


POLICY = {
    "limits": {"max_ttl": "2h", "max_spread": "1h30m", "window": 90, "max_rate": "600/m"},
    "users": {
        "pipeline": {"events": ["*"], "max_requests": 5, "max_ttl": "12h", "max_running": 3},
        "helpdesk": {"events": ["*"]},
    },
}


def test_limits_default_and_are_overridden_per_user() -> None:
    assert Limits().max_ttl == QUEUE_TTL and Policy({}).limits == Limits()
    policy = Policy.from_data(POLICY)
    assert policy.limits == Limits(
        max_ttl=7200, max_spread=5400, window=90, max_rate=10, max_requests=30
    )
    pipeline = policy.limits_for("pipeline")
    assert (pipeline.max_ttl, pipeline.max_requests, pipeline.max_running) == (43200, 5, 3)
    assert (pipeline.max_spread, pipeline.window) == (5400, 90), "the rest from [limits]"
    assert policy.limits_for("helpdesk") == policy.limits
    assert policy.limits_for("nobody") == policy.limits


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"limits": {"max_tll": "1h"}}, "unknown key limits.max_tll"),
        ({"users": {"a": {"max_tll": 1, "foo": 2}}}, "unknown key users.a.foo, users.a.max_tll"),
        ({"rules": {}}, "unknown key rules"),
        ({"limits": {"max_ttl": "30d"}}, "limits.max_ttl: at most 1d"),
        ({"limits": {"max_ttl": "1h", "max_spread": "1h"}}, "must be shorter than max_ttl 1h"),
        ({"users": {"a": {"max_ttl": "30m"}}}, "users.a: max_spread 1h: must be shorter"),
        ({"limits": {"window": "soon"}}, "limits.window: 'soon' is not a duration"),
        ({"limits": {"max_delivery_wait": "0s"}}, "limits.max_delivery_wait: must be positive"),
        ({"limits": {"max_rate": "fast"}}, "limits.max_rate: 'fast' is not a rate"),
        ({"limits": {"max_requests": 0}}, "limits.max_requests: a count >= 1"),
        ({"limits": {"max_running": True}}, "limits.max_running: a count >= 1"),
        ({"limits": ["x"]}, "limits: expected a table"),
        ({"users": {"a": "x"}}, "users.a: expected a table"),
    ],
)
def test_bad_limits_name_their_key(data: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError) as refused:
        Policy.from_data(data, "/etc/setevnt/policy.toml")
    assert str(refused.value).startswith("policy /etc/setevnt/policy.toml: ")
    assert says in str(refused.value)


def test_limits_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[limits]\nmax_ttl = "6h"\nmax_spread = 0\n\n'
        '[users.ops]\nevents = ["*"]\ntargets = ["all"]\nmax_targets = 9\nwindow = "1h30m"\n'
    )
    policy = Policy.load(path)
    assert (policy.limits.max_ttl, policy.limits.max_spread) == (21600, 0)
    assert policy.limits_for("ops").window == 5400


def test_the_example_policy_loads_and_states_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "policy.example.toml"
    policy = Policy.load(example)
    assert policy.limits == Limits(), "its [limits] table says it holds the defaults"
    assert policy.limits_for("helpdesk").max_requests == 10


@pytest.mark.parametrize(
    ("ttl", "says"),
    [
        (0, "positive"),
        (-1, "positive"),
        (math.nan, "positive"),
        (math.inf, "positive"),
        (QUEUE_TTL + 1, "client queues' message TTL"),
        (1e8, "per-message expiration limit"),
    ],
)
def test_a_library_caller_cannot_send_a_command_the_broker_would_not_honour(
    ttl: float, says: str
) -> None:
    dispatcher = Dispatcher(signer=None)  # builds commands without connecting
    with pytest.raises(ValueError, match=says):
        dispatcher.commands(["PC042"], ["CCIM32_STARTCYCLE"], ttl=ttl)
    (command,) = dispatcher.commands(["PC042"], ["CCIM32_STARTCYCLE"], ttl=QUEUE_TTL)
    assert command.expires_at - command.issued_at == QUEUE_TTL
