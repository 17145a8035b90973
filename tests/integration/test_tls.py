"""amqps:// with CA verification and client certificates, for dispatcher and agent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import BrokerError
from broker.settings import BrokerSettings
from dispatcher import Dispatcher, keys
from tests.integration.helpers import ROOT, Process
from tests.integration.tls_node import TlsNode, clean_tls_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    node = TlsNode(tmp_path_factory.mktemp("tls-node"))
    try:
        yield node
    finally:
        node.stop()


def test_trigger_end_to_end_over_tls(tls_node: TlsNode, tmp_path: Path) -> None:
    signer = keys.load()  # the session's dispatcher key: the agent obeys only it
    assert signer is not None
    env = {
        **clean_tls_env(),
        **tls_node.env(),
        "SETEVNT_AMQP_URL": tls_node.url,
        "SETEVNT_DISPATCHER_PUBLIC_KEY": signer.public_text(),
    }
    settings = BrokerSettings(
        url=tls_node.url,
        ca_file=env["SETEVNT_TLS_CA"],
        cert_file=env["SETEVNT_TLS_CERT"],
        key_file=env["SETEVNT_TLS_KEY"],
    )
    with Dispatcher(settings=settings) as dispatcher:
        dispatcher.provision(["TLS-PC"])
    agent = Process(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--client",
            "TLS-PC",
            "--backend",
            "simulated",
            "--journal",
            str(tmp_path / "journal"),
        ],
        env=env,
    )
    try:
        agent.wait_line("consuming setevnt.client.TLS-PC", timeout=30)
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "--client",
                "TLS-PC",
                "cq",
                "--wait",
                "20",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["status"] == "done"
    finally:
        agent.terminate()


@pytest.mark.parametrize(
    ("ca", "client_cert", "why"),
    [
        (False, True, "CERTIFICATE_VERIFY_FAILED"),  # broker's cert not from a trusted CA
        (True, False, "CERTIFICATE_REQUIRED"),  # broker demands a client certificate
    ],
)
def test_tls_is_verified_both_ways(
    tls_node: TlsNode, ca: bool, client_cert: bool, why: str
) -> None:
    chosen = tls_node.env(ca=ca, client_cert=client_cert)
    settings = BrokerSettings(
        url=tls_node.url,
        ca_file=chosen.get("SETEVNT_TLS_CA"),
        cert_file=chosen.get("SETEVNT_TLS_CERT"),
        key_file=chosen.get("SETEVNT_TLS_KEY"),
    )
    from broker.connection import open_blocking

    with pytest.raises(BrokerError, match=why):
        open_blocking(settings).close()


def test_missing_ca_file_is_a_clear_refusal(tls_node: TlsNode) -> None:
    from broker.connection import open_blocking
    from broker.errors import BrokerRefused

    settings = BrokerSettings(url=tls_node.url, ca_file="/nonexistent/ca.pem")
    with pytest.raises(BrokerRefused, match="TLS set-up"):
        open_blocking(settings)
