"""What `enroll` derives without a broker: the management URL, the config, the key choice."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent import config_shape
from agent.backends import BACKENDS as AGENT_BACKENDS
from broker.management import Management, default_url
from broker.settings import BrokerSettings
from dispatcher.access import agent_config, keys
from dispatcher.access.agent_config import EnrolledConfig


@pytest.mark.parametrize(
    ("amqp", "api"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "http://127.0.0.1:15672"),
        ("amqp://guest:guest@127.0.0.1:5673/%2F", "http://127.0.0.1:15673"),
        ("amqp://u:p@broker.example/%2F", "http://broker.example:15672"),
        ("amqps://u:p@broker.example/%2F", "https://broker.example:15671"),
        ("amqps://u:p@broker.example:5999/v", "https://broker.example:15999"),
        ("amqp://u:p@[::1]:5673/%2F", "http://[::1]:15673"),
    ],
)
def test_the_management_api_defaults_to_the_amqp_port_plus_10000(amqp: str, api: str) -> None:
    assert default_url(BrokerSettings(url=amqp)) == api


def test_an_explicit_or_environment_management_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = BrokerSettings(url="amqp://ops:secret@127.0.0.1:5673/%2F")
    monkeypatch.delenv("SETEVNT_MANAGEMENT_URL", raising=False)
    found = Management.for_broker(settings)
    assert (found.base_url, found.username, found.password) == (
        "http://127.0.0.1:15673",
        "ops",
        "secret",
    )
    monkeypatch.setenv("SETEVNT_MANAGEMENT_URL", "http://mgmt:8080/")
    assert Management.for_broker(settings).base_url == "http://mgmt:8080"
    assert Management.for_broker(settings, "http://given:1").base_url == "http://given:1"


def test_backend_choices_are_the_agents() -> None:
    assert set(agent_config.BACKENDS) == set(AGENT_BACKENDS)
    assert agent_config.parse_backend("signal") == "posix-signal"
    with pytest.raises(ValueError, match="unknown backend 'cq'; choose one of exec, posix-signal"):
        agent_config.parse_backend("cq")


@pytest.mark.parametrize("backend", agent_config.BACKENDS)
def test_every_backend_gives_valid_toml(backend: str) -> None:
    password = 'p"a\\ss#word'  # quoting is tomli-w's job
    text = EnrolledConfig("PC042", f"amqp://PC042:{password}@h:5672/%2F", "KEY", backend).toml()
    config = tomllib.loads(text)
    assert config["broker"]["url"].endswith(f"{password}@h:5672/%2F")
    assert config["backend"]["type"] == backend
    assert config["security"] == {"dispatcher_public_key": "KEY"}


def test_exec_commands_are_an_empty_table_with_commented_examples() -> None:
    text = EnrolledConfig("PC042", "amqp://u:p@h/%2F", None, "exec", ("CCIM32_CLOSE",)).toml()
    config = tomllib.loads(text)
    assert config["backend"]["exec"] == {"commands": {}}
    assert config["security"] == {"allow_unsigned": True}
    assert '# CCIM32_CLOSE = ["/path/to/program", "--argument"]' in text
    uncommented = text.replace("# CCIM32_CLOSE", "CCIM32_CLOSE")
    assert tomllib.loads(uncommented)["backend"]["exec"]["commands"]["CCIM32_CLOSE"]


def test_write_new_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "agent.toml"
    agent_config.write_new(target, "a = 1\n")
    assert target.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        agent_config.write_new(target, "b = 2\n")
    assert target.read_text() == "a = 1\n"


def test_a_key_is_required_unless_unsigned(tmp_path: Path) -> None:
    with pytest.raises(keys.NoSigningKey, match=r"^no signing key: give --key PATH"):
        keys.choose(None, False, {})
    assert keys.choose(None, True, {keys.KEY_FILE_ENV: "/ignored"}).signer is None
    path = tmp_path / "k"
    made = keys.generate(path)
    chosen = keys.choose(None, False, {keys.KEY_FILE_ENV: str(path)}).signer
    assert chosen is not None and chosen.public_text() == made.public_text()
    with pytest.raises(ValueError, match="contradict"):
        keys.choose(str(path), True, {})
    path.write_bytes(b"\xff\x00")
    with pytest.raises(ValueError, match=f"^signing key {path}: not a key"):
        keys.choose(str(path), False, {})


@pytest.mark.parametrize("backend", agent_config.BACKENDS)
def test_every_backend_passes_the_agents_strict_shape(backend: str) -> None:
    text = EnrolledConfig("PC042", "amqp://PC042:pw@h:5672/%2F", "KEY", backend).toml()
    assert config_shape.check(tomllib.loads(text))["backend"]["type"] == backend
