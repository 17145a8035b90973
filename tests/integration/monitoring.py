"""A real Prometheus (and Alertmanager) for tests, from Debian's binaries, and the
dashboard as a Grafana that imports it would read it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.common import free_port
from tests.integration.helpers import ROOT, Process, wait_for

DEPLOY = ROOT / "deploy"
RATE_WINDOW = "30s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval
# What Grafana puts in for its own variables, for a test's last minutes at 1 s scrapes.
GRAFANA_MACROS = {"$__rate_interval": RATE_WINDOW, "$__range": "5m", "$__interval": "15s"}


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise FileNotFoundError("prometheus is not installed; run scripts/ensure-tools.sh")
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def write_config(
    tmp: Path, dispatcher_port: int, vhost: str, alertmanager: int | None = None
) -> Path:
    """The deploy/ scrape jobs pointed at this machine, and the deploy/ alert rules; alerts
    go to the Alertmanager on port ``alertmanager``, or nowhere."""
    deployed = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {
        "setevnt-dispatcher": f"127.0.0.1:{dispatcher_port}",
        "rabbitmq": "127.0.0.1:15692",
        "rabbitmq-queues": "127.0.0.1:15692",
    }
    for job in deployed["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        job["scrape_interval"] = "1s"
        if job["job_name"] == "rabbitmq-queues":
            job["params"]["vhost"] = [vhost]  # only this test's queues
    deployed["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    deployed["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in deployed["rule_files"]]
    deployed.pop("alerting")
    if alertmanager is not None:
        targets = [f"127.0.0.1:{alertmanager}"]
        deployed["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(deployed))
    return path


class Prometheus:
    def __init__(self, config: Path, tmp: Path) -> None:
        self.port = free_port()
        self.process = Process(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )
        wait_for(self._ready, 30, "prometheus ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            if self.process.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.process.output}") from None
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        try:
            return dict(self.api("query", **params))
        except urllib.error.HTTPError as exc:  # 400 for a bad expression: keep its error
            return dict(json.loads(exc.read()))

    def targets_up(self) -> bool:
        active = self.api("targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        self.process.terminate()


def has_numbers(result: dict[str, Any]) -> bool:
    """True when the query returned at least one series with a real number."""
    for series in result.get("data", {}).get("result", []):
        value = float(series["value"][1])
        if not math.isnan(value):
            return True
    return False


class Alertmanager:
    """Debian's Alertmanager on a free port, alone (no cluster), with a given config."""

    def __init__(self, config: Path, tmp: Path) -> None:
        binary = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
        if not Path(binary).exists():
            raise FileNotFoundError("alertmanager is not installed; run scripts/ensure-tools.sh")
        self.port = free_port()
        self.process = Process(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={tmp / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ]
        )
        wait_for(self._ready, 30, "alertmanager ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            if self.process.proc.poll() is not None:
                raise AssertionError(f"alertmanager exited:\n{self.process.output}") from None
            return False

    def alerts(self, name: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"filter": f'alertname="{name}"'})
        url = f"http://127.0.0.1:{self.port}/api/v2/alerts?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return list(json.loads(response.read()))

    def stop(self) -> None:
        self.process.terminate()


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("amtool") or "/usr/bin/amtool"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


class Imported:
    """The dashboard as a Grafana whose only datasources are ``datasources`` (uid ->
    type) would use it: every datasource reference resolved, or an AssertionError naming
    those that point nowhere; Grafana's macros and the dashboard's variables replaced as
    Grafana does with their defaults (``All``: the variable's ``allValue``)."""

    def __init__(
        self,
        board: Mapping[str, Any],
        datasources: Mapping[str, str],
        macros: Mapping[str, str] = GRAFANA_MACROS,
    ) -> None:
        self._datasources = datasources
        self._variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
        self._macros = macros
        self.broken: list[str] = []
        self.panels = [
            (panel["title"], self._expr(f"panel {panel['title']!r}", target, panel))
            for panel in _panels(board)
            for target in panel.get("targets", [])
        ]
        self.annotations = [
            (item["name"], self._expr(f"annotation {item['name']!r}", item, item))
            for item in board.get("annotations", {}).get("list", [])
        ]
        self.variable_queries = [
            (name, self._expr(f"variable {name!r}", {"expr": v["definition"]}, v))
            for name, v in self._variables.items()
            if v["type"] == "query"
        ]
        assert not self.broken, f"datasources this Grafana does not have: {self.broken}"

    def _expr(self, where: str, target: Mapping[str, Any], owner: Mapping[str, Any]) -> str:
        for ref in (owner.get("datasource"), target.get("datasource")):
            if ref is not None and not self._resolves(ref):
                self.broken.append(f"{where}: {ref}")
        text = str(target["expr"])
        for macro, value in self._macros.items():
            text = text.replace(macro, value)
        for name, variable in self._variables.items():
            value = variable.get("allValue") or ".*"
            text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
        assert "$" not in text, f"{where}: a variable this check cannot fill in: {text}"
        return text

    def _resolves(self, ref: Any) -> bool:
        uid = ref.get("uid") if isinstance(ref, Mapping) else ref
        if isinstance(uid, str) and uid.startswith("$"):
            variable = self._variables.get(uid.strip("${}"))
            return (
                variable is not None
                and variable["type"] == "datasource"
                and variable["query"] in self._datasources.values()
            )
        return uid in self._datasources


def _panels(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves hold no query."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/setevnt.json").read_text())
    return board


def label_values(prometheus: Prometheus, query: str) -> list[str]:
    """Grafana's ``label_values(selector, label)``, asked of Prometheus' series API."""
    inner = query.removeprefix("label_values(").removesuffix(")")
    selector, label = (part.strip() for part in inner.rsplit(",", 1))
    found = prometheus.api(f"label/{label}/values", **{"match[]": selector})
    return list(found["data"])


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
