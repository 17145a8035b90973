"""Agent configuration: the example file, precedence, and errors that name what is wrong."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.backends import BackendConfigError, make_backend
from agent.backends.exec import ExecBackend
from agent.config import (
    PUBLIC_KEY_ENV,
    PUBLIC_KEY_PLACEHOLDER,
    AgentConfig,
    ConfigError,
    SecurityConfig,
    load,
)
from broker.settings import DEFAULT_URL
from schemas.signing import Signer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "agent.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_loads_and_selects_the_exec_backend() -> None:
    config = load(EXAMPLE, environ={})
    assert config.client_id == "PC042"
    assert config.platform == "nt"
    assert config.groups == ("lab-1", "floor-2")
    assert config.broker.url == DEFAULT_URL
    assert config.broker.heartbeat == 20
    assert config.broker.connection_name == "setevnt-agent PC042"
    assert config.hello_interval == 60.0
    assert config.stall_timeout == 120.0
    assert config.allow_force is False
    assert config.journal == "/var/lib/setevnt/journal"
    assert config.guard.spool == "/var/lib/setevnt/journal.spool"
    assert config.max_command_lifetime == 86400.0
    assert config.component_versions == {"CCIM32": "2.0.1493.4", "SMSAPM32": "2.0.1493.4"}
    assert config.backend == "exec"
    assert config.backend_options == {"timeout": 300.0, "commands": {}}  # "5m"; to fill in
    assert isinstance(make_backend(config.backend, config.backend_options), ExecBackend)
    site = config.catalog.component("CLISETUP")
    assert site is not None
    assert site.events == ("STARTCYCLE",)
    assert site.platforms == frozenset({"nt"})


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    """`setevnt-agent run` expected to refuse to start (a broker it would reach: none)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SETEVNT_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", *args],
        cwd=ROOT,
        env={**clean, "SETEVNT_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_example_ships_a_key_to_fill_in_and_never_unsigned_commands() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    security = tomllib.loads(text)["security"]
    assert security == {"dispatcher_public_key": PUBLIC_KEY_PLACEHOLDER, "max_clock_skew": 300}
    assert "\n# allow_unsigned = true\n" in text  # documented, commented out
    assert "dispatcher_public_key" in text[: text.index("client_id =")]  # said at the top
    assert load(EXAMPLE, environ={}).security is None  # the placeholder is no key
    refused = run_agent("--config", str(EXAMPLE))
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "dispatcher_public_key" in line and "Traceback" not in refused.stderr

    key = Signer.generate().public_text()
    assert load(EXAMPLE, environ={PUBLIC_KEY_ENV: key}).security == SecurityConfig((key,))


def test_run_refuses_to_start_without_a_journal(tmp_path: Path) -> None:
    key = Signer.generate().public_text()
    config = write(tmp_path, f'client_id = "PC042"\n[security]\ndispatcher_public_key = "{key}"\n')
    refused = run_agent("--config", str(config), "--backend", "exec")
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("setevnt-agent: [agent] journal is not set")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")
def test_run_refuses_a_journal_others_could_write(tmp_path: Path) -> None:
    key = Signer.generate().public_text()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    config = write(tmp_path, f'client_id = "PC042"\n[security]\ndispatcher_public_key = "{key}"\n')
    refused = run_agent(
        "--config", str(config), "--backend", "exec", "--journal", str(shared / "journal")
    )
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "writable by group or others" in line and str(shared) in line


def commented_backend_tables() -> list[str]:
    """The example's commented-out ``[backend.<kind>]`` blocks, uncommented."""
    text = EXAMPLE.read_text(encoding="utf-8")
    blocks = re.findall(r"^# \[backend\.[^\n]*\n(?:#[^\n]*\n)*", text, re.MULTILINE)
    return [
        "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in block.splitlines())
        for block in blocks
    ]


def test_every_commented_backend_table_in_the_example_works_when_uncommented(
    tmp_path: Path,
) -> None:
    kinds = set()
    for block in commented_backend_tables():
        (kind, options), *rest = tomllib.loads(block)["backend"].items()
        assert rest == []
        kinds.add(kind)
        path = tmp_path / f"{kind}.toml"
        path.write_text(f'client_id = "PC042"\n[backend]\ntype = "{kind}"\n{block}')
        options = load(path, environ={}).backend_options  # the strict check passes
        if kind == "win32-event" and sys.platform != "win32":
            with pytest.raises(BackendConfigError, match="Windows"):
                make_backend(kind, options)
            assert options["prefix"] == "Global\\"
        else:
            assert make_backend(kind, options).name == kind
    assert kinds == {"posix-signal", "file", "win32-event", "simulated"}


def test_the_example_exec_commands_pass_the_catalog_check_when_uncommented(
    tmp_path: Path,
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    table = text[text.index("\n[backend.exec.commands]\n") + 1 :].split("\n\n")[0]
    entries = [line[2:] for line in table.splitlines() if re.match(r"# [A-Z0-9]+_[A-Z]+ = ", line)]
    assert len(entries) >= 3
    path = write(tmp_path, text.replace(table, "[backend.exec.commands]\n" + "\n".join(entries)))
    commands = load(path, environ={}).backend_options["commands"]
    assert commands["CCIM32_STARTCYCLE"] == ["/opt/sms/bin/ccim32", "--start-cycle"]
    assert "CLISETUP_STARTCYCLE" in commands  # the example's own [[components]]


def test_environment_overrides_the_file() -> None:
    url = "amqps://agent:secret@broker.example:5671/prod"
    config = load(EXAMPLE, environ={"SETEVNT_CLIENT_ID": "PC-ENV", "SETEVNT_AMQP_URL": url})
    assert config.client_id == "PC-ENV"
    assert config.broker.url == url
    assert config.broker.connection_name == "setevnt-agent PC-ENV"


def test_overrides_beat_the_environment(tmp_path: Path) -> None:
    environ = {"SETEVNT_CLIENT_ID": "PC-ENV", "SETEVNT_AMQP_URL": "amqp://env-host/"}
    overrides = {
        "client_id": "PC-CLI",
        "url": "amqp://cli-host/",
        "backend": "file",
        "journal": str(tmp_path / "journal"),
    }
    config = load(EXAMPLE, environ=environ, overrides=overrides)
    assert config.client_id == "PC-CLI"
    assert config.broker.url == "amqp://cli-host/"
    assert config.backend == "file"
    assert config.backend_options == {}  # [backend.file] is commented out in the example
    assert config.journal == str(tmp_path / "journal")


def test_given_environ_is_used_instead_of_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SETEVNT_AMQP_URL", "amqp://process-env-host/")
    monkeypatch.setenv("SETEVNT_CLIENT_ID", "PC-PROCESS")
    config = load(write(tmp_path, 'client_id = "PC-FILE"\n'), environ={})
    assert config.client_id == "PC-FILE"
    assert config.broker.url == DEFAULT_URL


def test_missing_client_id_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SETEVNT_CLIENT_ID"):
        load(write(tmp_path, 'platform = "nt"\n'), environ={})
    with pytest.raises(ConfigError, match="SETEVNT_CLIENT_ID"):
        load(None, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('client_id = "PC042"\nplatform = "macos"\n', "platform 'macos'"),
        ('client_id = "bad id!"\n', "client_id: 'bad id!' is not a client id"),
        ('client_id = "PC042\\n"\n', "client_id"),  # a trailing newline is not an id
        ('client_id = "-PC042"\n', "client_id"),
        ('client_id = "PC042"\ngroups = ["lab-1", "floor 2"]\n', "groups: 'floor 2'"),
        ('client_id = "PC042"\ngroups = "lab1"\n', "groups: must be an array"),
        ('client_id = "PC042"\n[agent]\nhello_interval = 0\n', "hello_interval"),
        ('client_id = "PC042"\n[agent]\nstall_timeout = 0\n', "stall_timeout"),
        ('client_id = "PC042"\n[agent]\nstall_timeout = "forever"\n', "stall_timeout"),
        ('client_id = "PC042"\n[agent]\nmax_command_lifetime = 0\n', "max_command_lifetime"),
        ('client_id = "PC042"\n[agent]\nmax_command_lifetime = inf\n', "max_command_lifetime"),
        ('client_id = "PC042"\n[broker]\nheartbeat = "soon"\n', "broker"),
        ('client_id = "PC042"\nbroker = "amqp://host/"\n', "broker: must be a table, not a string"),
        ('client_id = "PC042"\n[[components]]\nname = "clisetup"\n', "clisetup"),
        ('client_id = "PC042"\n[[components]]\ntitle = "no name"\n', "name"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), environ={})


@pytest.mark.parametrize("url", ["http://broker.example/", "amqp://", "broker.example:5672"])
def test_a_non_amqp_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'client_id = "PC042"\n[broker]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match="not an AMQP URL"):
        load(path, environ={})
    with pytest.raises(ConfigError, match="not an AMQP URL"):
        load(EXAMPLE, environ={"SETEVNT_AMQP_URL": url})


def test_site_components_join_the_default_catalog(tmp_path: Path) -> None:
    text = """
client_id = "PC042"

[[components]]
name = "CLISETUP"
events = ["STARTCYCLE"]

[[components]]
name = "INVAGENT"
title = "Inventory Agent"
platforms = ["win9x"]
"""
    catalog = load(write(tmp_path, text), environ={}).catalog
    assert catalog.has_event("CLISETUP", "STARTCYCLE")
    assert not catalog.has_event("CLISETUP", "CLOSE")
    inventory = catalog.component("INVAGENT")
    assert inventory is not None
    assert inventory.events == ("STARTCYCLE", "CLOSE")  # the default events
    assert inventory.platforms == frozenset({"win9x"})
    assert catalog.has_event("CCIM32", "STARTCYCLE")  # the defaults are still there
    assert "CLISETUP" not in load(None, environ={"SETEVNT_CLIENT_ID": "PC042"}).catalog


def test_nonexistent_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.toml", environ={"SETEVNT_CLIENT_ID": "PC042"})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'client_id = "PC042\n[broker\n')
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load(path, environ={})


def test_agent_config_defaults() -> None:
    config = AgentConfig(client_id="PC042")
    assert config.platform == "nt"
    assert config.backend is None  # chosen by name only: `run` refuses without one
    assert config.journal is None
    assert config.broker.url == DEFAULT_URL
