"""The agent obeys only the dispatcher: signatures, unsigned commands, clock skew, config."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.backends.simulated import SimulatedBackend
from agent.config import AgentConfig, ConfigError, SecurityConfig, load
from agent.handler import Delivery, Handler, Run, Settle
from agent.journal import Journal
from schemas import Ack, Command, decode, encode
from schemas.signing import KEY_ID_HEADER, SIGNATURE_HEADER, Signer

DISPATCHER = Signer.generate()


def command(**changes: object) -> Command:
    now = time.time()
    fields: dict[str, object] = {
        "command_id": f"c{time.monotonic_ns()}",
        "client_id": "PC042",
        "component": "CCIM32",
        "event": "STARTCYCLE",
        "silent": True,
        "issued_at": now,
        "expires_at": now + 60,
        "requested_by": "test",
    }
    fields.update(changes)
    return Command(**fields)  # type: ignore[arg-type]


def handler(security: SecurityConfig | None) -> Handler:
    config = AgentConfig(client_id="PC042", security=security)
    return Handler(config, SimulatedBackend(duration=0), Journal(None))


def deliver(body: bytes, headers: dict[str, object] | None) -> Delivery:
    return Delivery(body, "m1", time.time(), time.monotonic(), headers)


def refusal(verdict: Settle | Run) -> tuple[str, str | None]:
    assert isinstance(verdict, Settle) and verdict.dead_letter
    ack = decode(verdict.ack, Ack)
    return ack.status, ack.reason


SIGNED = SecurityConfig(public_keys=(DISPATCHER.public_text(),))


def test_a_signed_command_runs() -> None:
    body = encode(command())
    assert isinstance(handler(SIGNED).admit(deliver(body, DISPATCHER.headers(body))), Run)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, h: (body, None),  # unsigned
        lambda body, h: (encode(command(component="CLISVCL", event="CLOSE")), h),  # swapped
        lambda body, h: (body, Signer.generate().headers(body)),  # another key
        lambda body, h: (  # another key, claiming the dispatcher's key id
            body,
            {**Signer.generate().headers(body), KEY_ID_HEADER: h[KEY_ID_HEADER]},
        ),
        lambda body, h: (body, {**h, SIGNATURE_HEADER: "AAAA"}),  # garbage signature
    ],
)
def test_unsigned_forged_and_tampered_commands_are_refused(tamper: object) -> None:
    body = encode(command())
    body, headers = tamper(body, DISPATCHER.headers(body))  # type: ignore[operator]
    assert refusal(handler(SIGNED).admit(deliver(body, headers))) == ("rejected", "bad-signature")


def test_a_refused_command_is_not_signalled(tmp_path: Path) -> None:
    record = tmp_path / "record"
    config = AgentConfig(client_id="PC042", security=SIGNED)
    agent = Handler(config, SimulatedBackend(duration=0, record=str(record)), Journal(None))
    body = encode(command())
    assert isinstance(agent.admit(deliver(body, None)), Settle)
    assert not record.exists()


def test_allow_unsigned_accepts_unsigned_but_still_refuses_bad_signatures() -> None:
    development = SecurityConfig(public_keys=(DISPATCHER.public_text(),), allow_unsigned=True)
    body = encode(command())
    assert isinstance(handler(development).admit(deliver(body, None)), Run)
    forged = Signer.generate().headers(body)
    assert refusal(handler(development).admit(deliver(body, forged))) == (
        "rejected",
        "bad-signature",
    )


def test_a_command_from_the_future_is_refused_for_clock_skew() -> None:
    now = time.time()
    body = encode(command(issued_at=now + 3600, expires_at=now + 7200))
    verdict = handler(SIGNED).admit(deliver(body, DISPATCHER.headers(body)))
    assert refusal(verdict) == ("rejected", "clock-skew")


def test_a_replayed_signed_command_is_answered_from_the_journal_not_run_again() -> None:
    agent = handler(SIGNED)
    body = encode(command())
    first = agent.admit(deliver(body, DISPATCHER.headers(body)))
    assert isinstance(first, Run)
    ack = agent.execute(first.command, deliver(body, None))
    replay = agent.admit(deliver(body, DISPATCHER.headers(body)))
    assert isinstance(replay, Settle) and replay.ack == ack and not replay.dead_letter


def test_security_needs_a_key_or_an_explicit_development_choice() -> None:
    with pytest.raises(ConfigError, match="allow_unsigned"):
        SecurityConfig()
    with pytest.raises(ConfigError, match="public key"):
        SecurityConfig(public_keys=("not a key",))


def test_config_file_and_environment_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'client_id = "PC042"\n[security]\ndispatcher_public_key = "{DISPATCHER.public_text()}"\n'
    )
    assert load(path, environ={}).security == SecurityConfig((DISPATCHER.public_text(),))
    other = Signer.generate().public_text()
    env = {"SETEVNT_DISPATCHER_PUBLIC_KEY": other}
    security = load(path, environ=env).security
    assert security is not None and security.public_keys == (other, DISPATCHER.public_text())
    bare = tmp_path / "bare.toml"
    bare.write_text('client_id = "PC042"\n')
    assert load(bare, environ={}).security is None  # `run` refuses this; `hold` does not care
    path.write_text('client_id = "PC042"\n[security]\nallow_unsigned = "yes"\n')
    with pytest.raises(ConfigError, match="allow_unsigned"):
        load(path, environ={})
