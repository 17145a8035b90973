"""A real Prometheus for tests: started from Debian's binary, scraping given targets."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.integration.helpers import ROOT, Process, wait_for

DEPLOY = ROOT / "deploy"
RATE_WINDOW = "30s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise FileNotFoundError("prometheus is not installed; run scripts/ensure-tools.sh")
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def write_config(tmp: Path, dispatcher_port: int, vhost: str) -> Path:
    """The deploy/ scrape jobs pointed at this machine, and the deploy/ alert rules."""
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

    def query(self, expr: str) -> dict[str, Any]:
        try:
            return dict(self.api("query", query=expr))
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


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads((DEPLOY / "grafana/dashboards/setevnt.json").read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_WINDOW))
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
