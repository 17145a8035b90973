"""deploy/ is what an operator installs: it must parse, be complete and match the code."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from agent.cli import build_parser as agent_parser
from dispatcher import Dispatcher
from dispatcher.main import build_parser as dispatcher_parser
from tests.conftest import management
from tests.integration.helpers import ROOT

DEPLOY = ROOT / "deploy"


def test_compose_parses_and_every_mounted_file_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"rabbitmq", "dispatcher", "fleet", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).exists(), f"{name}: no Dockerfile"
    prometheus_files = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prometheus_files


def test_the_compose_dispatcher_counts_what_its_fleet_sends() -> None:
    """The simulated fleet answers for all its clients as one broker user: unless the
    dispatcher trusts that user, every ack and heartbeat it sends is dropped."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    fleet_user = urllib.parse.urlsplit(services["fleet"]["environment"]["SETEVNT_AMQP_URL"])
    trusted = services["dispatcher"]["environment"].get("SETEVNT_TRUSTED_SENDERS", "")
    assert fleet_user.username in [u.strip() for u in trusted.split(",")]
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    assert fleet_user.username in {u["name"] for u in definitions["users"]}


def test_the_compose_commands_exist_in_the_project() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name in ("dispatcher", "fleet"):
        program, subcommand = compose["services"][name]["command"][:2]
        module = {"setevnt-dispatcher": "dispatcher", "setevnt-agent": "agent"}[program]
        shown = subprocess.run(
            [sys.executable, "-m", module, subcommand, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, f"{program} {subcommand}: {shown.stderr}"


@pytest.mark.parametrize("script", ["make_dashboard.py", "make_definitions.py"])
def test_generated_deploy_files_are_up_to_date(script: str) -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.broker
def test_definitions_load_into_a_real_broker_and_agree_with_the_dispatcher(
    vhost: str, amqp_url: str
) -> None:
    definitions = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text())
    scoped = {key: definitions[key] for key in ("exchanges", "queues", "bindings", "policies")}
    for items in scoped.values():
        for item in items:
            item.pop("vhost", None)
    quoted = urllib.parse.quote(vhost, safe="")
    management("POST", f"/definitions/{quoted}", scoped)
    queues = {q["name"] for q in management("GET", f"/queues/{quoted}")}
    assert {q["name"] for q in definitions["queues"]} <= queues
    # Declaring the same topology from code must not hit 406 PRECONDITION_FAILED.
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC001"])
    policies = management("GET", f"/policies/{quoted}")
    assert [p["name"] for p in policies] == ["setevnt-client-bytes"]


def test_systemd_units_run_real_commands() -> None:
    parsers = {"setevnt-agent": agent_parser(), "setevnt-dispatcher": dispatcher_parser()}
    units = DEPLOY / "systemd"
    timers = {t.stem for t in units.glob("*.timer")}
    for unit in units.glob("*.service"):
        settings = unit_settings(unit)
        program, *arguments = settings["ExecStart"].split()
        assert Path(program).name in parsers, unit.name
        try:  # the command line in the unit is one the program accepts
            parsers[Path(program).name].parse_args(arguments)
        except SystemExit as exc:
            raise AssertionError(f"{unit.name}: ExecStart refused: {arguments}") from exc
        # Enabled by itself, or started by its timer.
        assert "[Install]" in unit.read_text() or unit.stem in timers, unit.name
    for stem in timers:
        assert (units / f"{stem}.service").exists(), f"{stem}.timer starts no service"
        assert "[Install]" in (units / f"{stem}.timer").read_text()


def test_the_prune_timer_works_on_the_dispatchers_database() -> None:
    dispatcher = unit_settings(DEPLOY / "systemd" / "setevnt-dispatcher.service")
    prune = unit_settings(DEPLOY / "systemd" / "setevnt-prune.service")
    for key in ("User", "StateDirectory", "WorkingDirectory", "EnvironmentFile"):
        assert prune[key] == dispatcher[key], key


def unit_settings(unit: Path) -> dict[str, str]:
    """KEY=VALUE lines of a systemd unit (the last one wins, as in systemd)."""
    lines = unit.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}
