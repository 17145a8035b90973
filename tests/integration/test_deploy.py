"""deploy/ is what an operator installs: it must parse, be complete and match the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import build_parser as agent_parser
from dispatcher import Dispatcher
from dispatcher.cli.main import build_parser as dispatcher_parser
from tests.conftest import management
from tests.integration.helpers import ROOT
from tests.integration.monitoring import Imported

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


# -- monitoring: alerts, runbook, dashboard -------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def runbook_sections() -> dict[str, str]:
    """``## Name`` sections of docs/runbook.md, by their GitHub anchor."""
    text = (ROOT / "docs/runbook.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return {s.split("\n", 1)[0].strip().lower(): s for s in sections}


def test_every_alert_says_what_it_means_and_where_its_runbook_is() -> None:
    sections = runbook_sections()
    names = [rule["alert"] for rule in alert_rules()]
    for rule in alert_rules():
        notes = rule["annotations"]
        assert notes.get("summary") and len(notes.get("description", "")) > 40, rule["alert"]
        page, anchor = notes["runbook_url"].split("#")
        assert (ROOT / page).resolve() == ROOT / "docs/runbook.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        section = sections.get(anchor, "")
        for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
            assert part in section, f"{rule['alert']}: the runbook has no {part}"
    assert sorted(sections) == sorted(n.lower() for n in names), "one section per alert"
    listed = (DEPLOY / "README.md").read_text()
    assert [n for n in names if f"`{n}`" not in listed] == [], "deploy/README lists every alert"


def test_the_alerts_cover_acks_piling_up_broker_alarms_and_stuck_storms() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    backlog = exprs["SetevntAckBacklog"]
    assert "rabbitmq_detailed_queue_messages" in backlog and 'queue="setevnt.acks"' in backlog
    assert "rabbitmq_alarms_memory_used_watermark" in exprs["SetevntBrokerMemoryAlarm"]
    assert "rabbitmq_alarms_free_disk_space_watermark" in exprs["SetevntBrokerDiskAlarm"]
    assert 'setevnt_storms{state="interrupted"}' in exprs["SetevntStormStuckInterrupted"]
    # The per-queue job keeps the acks queue's series: the backlog alert has data.
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (queues,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "rabbitmq-queues"]
    keep = queues["metric_relabel_configs"][0]["regex"].replace("\\\\", "\\")
    assert re.fullmatch(keep, "setevnt.acks")


def test_the_dashboard_names_no_datasource_of_its_own() -> None:
    board = json.loads((DEPLOY / "grafana/dashboards/setevnt.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert {"component", "event"} <= set(variables)
    references = [variables["component"]["datasource"], variables["event"]["datasource"]]
    references += [a["datasource"] for a in board["annotations"]["list"]]
    for panel in board["panels"]:
        if panel["type"] != "row":
            references += [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
    assert {r["uid"] for r in references} == {"${datasource}"}
    assert [p["title"] for p in board["panels"] if p["type"] == "row"], "panels in rows"
    stats = [p["title"] for p in board["panels"] if p["type"] == "stat"]
    assert {"Commands published", "Done", "In flight now"} <= set(stats)
    marks = " ".join(a["expr"] for a in board["annotations"]["list"])
    assert "setevnt_storms" in marks and "setevnt_storm_last_started" in marks
    per_event = [
        t["expr"]
        for p in board["panels"]
        for t in p.get("targets", [])
        if "setevnt_commands_published_total" in t["expr"]
    ]
    assert per_event and all('component=~"$component"' in e for e in per_event)


def test_the_import_check_refuses_a_dashboard_that_names_its_datasource() -> None:
    """The check the real-Prometheus test imports the dashboard through is not a yes-man."""
    board = json.loads((DEPLOY / "grafana/dashboards/setevnt.json").read_text())
    Imported(board, {"another-sites-prometheus": "prometheus"})
    board["panels"][1]["datasource"] = {"type": "prometheus", "uid": "setevnt-prometheus"}
    with pytest.raises(AssertionError, match="setevnt-prometheus"):
        Imported(board, {"another-sites-prometheus": "prometheus"})


# -- compose: the ledger, health, the key, alert routing ------------------------------------


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())[
        "services"
    ]
    return services


def test_the_compose_dispatcher_keeps_its_ledger_in_a_volume_and_says_when_it_is_healthy() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    dispatcher = compose["services"]["dispatcher"]
    database = Path(dispatcher["environment"]["SETEVNT_DB"])
    mounts = dict(reversed(v.split(":")[:2]) for v in dispatcher["volumes"])
    assert mounts.get(str(database.parent)) in compose["volumes"], "the ledger is in a volume"
    command = dispatcher["command"]
    port = command[command.index("--metrics-port") + 1]
    check = " ".join(dispatcher["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/metrics" in check and dispatcher["healthcheck"]["start_period"]
    # Whatever needs a working dispatcher waits for it to be healthy.
    assert compose["services"]["fleet"]["depends_on"]["dispatcher"] == {
        "condition": "service_healthy"
    }


def test_the_compose_dispatcher_signs_with_the_key_the_operator_made() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    dispatcher = compose["services"]["dispatcher"]
    (name,) = dispatcher["secrets"]
    assert dispatcher["environment"]["SETEVNT_SIGNING_KEY_FILE"] == f"/run/secrets/{name}"
    source = compose["secrets"][name]["file"]
    assert source.startswith("./secrets/"), "a file the operator makes, not one we ship"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/secrets/" in ignored and "/.env" in ignored, "never committed by accident"
    readme = (DEPLOY / "README.md").read_text()
    assert f"keygen --out deploy/{source[2:]}" in readme, "deploy/README says how to make it"
    uid = re.search(r"--uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert uid and f"chown {uid.group(1)} deploy/{source[2:]}" in readme
    # The fleet verifies what the dispatcher signs: compose refuses to start without it.
    key = compose["services"]["fleet"]["environment"]["SETEVNT_DISPATCHER_PUBLIC_KEY"]
    assert key.startswith("${SETEVNT_DISPATCHER_PUBLIC_KEY:?")


def test_compose_routes_alerts_through_the_deployed_alertmanager() -> None:
    services = compose_services()
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (target,) = scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    assert (
        "./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in (services[host]["volumes"])
    )
    routing = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    receivers = {r["name"] for r in routing["receivers"]}
    routes = [routing["route"], *routing["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= receivers
    for service in ("dispatcher", "prometheus", "alertmanager", "rabbitmq"):
        assert "healthcheck" in services[service], service


# -- systemd: the signing key and the broker -------------------------------------------------


@pytest.mark.parametrize("unit", ["setevnt-dispatcher.service", "setevnt-prune.service"])
def test_the_dispatcher_units_read_the_signing_key_as_a_credential(unit: str) -> None:
    settings = unit_settings(DEPLOY / "systemd" / unit)
    assert settings["DynamicUser"] == "yes"
    name, path = settings["LoadCredential"].split(":", 1)
    assert path == "/etc/setevnt/dispatcher.key"
    assert settings["Environment"] == f"SETEVNT_SIGNING_KEY_FILE=%d/{name}"


@pytest.mark.parametrize("unit", ["setevnt-dispatcher.service", "setevnt-agent.service"])
def test_a_configuration_error_does_not_restart_forever(unit: str) -> None:
    """Both CLIs exit 2 on a bad configuration or key: no restart loop for that."""
    settings = unit_settings(DEPLOY / "systemd" / unit)
    assert settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"].split() == ["2"]


def test_the_dispatcher_starts_after_a_broker_on_its_host() -> None:
    settings = unit_settings(DEPLOY / "systemd" / "setevnt-dispatcher.service")
    assert "rabbitmq-server.service" in settings["After"].split()
    assert "rabbitmq-server.service" in settings["Wants"].split()


def test_systemd_accepts_the_dispatcher_units(tmp_path: Path) -> None:
    """systemd's own check, offline: every key known, every value well formed. The
    programs and the key are not installed here; stand-ins take their places."""
    units = ["setevnt-dispatcher.service", "setevnt-prune.service", "setevnt-prune.timer"]
    for name in units:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace("/opt/setevnt/bin/setevnt-dispatcher", "/bin/true")
        text = text.replace("/etc/setevnt/dispatcher.key", "/etc/hostname")
        (tmp_path / name).write_text(text)
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), (
        verified.stdout + verified.stderr
    )
