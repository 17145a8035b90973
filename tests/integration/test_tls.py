"""amqps:// with CA verification and client certificates, for dispatcher and agent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.connection import open_blocking
from broker.errors import BrokerError, BrokerRefused, ConnectionLost
from broker.publisher import ConfirmingPublisher, Outcome, Outgoing
from broker.settings import BrokerSettings
from dispatcher import Dispatcher
from dispatcher.access import keys
from tests.integration.helpers import ROOT, Process, wait_for
from tests.integration.tls_node import TlsNode, clean_tls_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# How a refused client certificate reaches the client: the broker's alert, or the TLS
# stream ending without one.
CERTIFICATE_REFUSED = r"TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLEOFError"


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
    with Dispatcher(settings=tls_settings(tls_node)) as dispatcher:
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
                "dispatcher.cli.setevnt",
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


def tls_settings(node: TlsNode, *, ca: bool = True, client_cert: bool = True) -> BrokerSettings:
    chosen = node.env(ca=ca, client_cert=client_cert)
    return BrokerSettings(
        url=node.url,
        ca_file=chosen.get("SETEVNT_TLS_CA"),
        cert_file=chosen.get("SETEVNT_TLS_CERT"),
        key_file=chosen.get("SETEVNT_TLS_KEY"),
    )


def test_the_pipelined_publisher_over_tls(tls_node: TlsNode) -> None:
    """A storm's publisher, its writes held and sent together, through the TLS layer."""
    settings = tls_settings(tls_node)
    connection = open_blocking(settings)
    try:
        connection.channel().queue_declare("tls.storm", durable=True)
    finally:
        connection.close()
    messages = [Outgoing(f"t{i}", "", "tls.storm", b"x" * 200, "command") for i in range(300)]
    with ConfirmingPublisher(settings, window=64, channels=2) as publisher:
        outcomes = publisher.publish(messages)
    assert outcomes == {m.key: Outcome.SENT for m in messages}
    connection = open_blocking(settings)
    try:
        channel = connection.channel()
        assert channel.queue_declare("tls.storm", passive=True).method.message_count == 300
        channel.queue_delete("tls.storm")
    finally:
        connection.close()


def test_the_broker_certificate_is_verified(tls_node: TlsNode) -> None:
    """The broker's certificate is not from a CA the client trusts: the client itself
    ends the handshake, before anything is sent."""
    with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
        open_blocking(tls_settings(tls_node, ca=False)).close()


def test_a_client_without_certificate_is_refused(tls_node: TlsNode) -> None:
    """The broker demands a client certificate and the client has none.

    In TLS 1.3 the client's side of the handshake is over before the broker has looked
    at its certificate, so how the refusal reaches the client is a race: mostly the
    broker's certificate_required alert, now and then (more often on a loaded machine)
    only the end of the stream. Either way no connection opens, and the broker logs
    that it refused the client for want of a certificate.
    """
    before = tls_node.certificate_alerts()
    with pytest.raises(ConnectionLost, match=CERTIFICATE_REFUSED):
        open_blocking(tls_settings(tls_node, client_cert=False)).close()
    wait_for(lambda: tls_node.certificate_alerts() > before, 30, "the node to log its refusal")


def test_missing_ca_file_is_a_clear_refusal(tls_node: TlsNode) -> None:
    settings = BrokerSettings(url=tls_node.url, ca_file="/nonexistent/ca.pem")
    with pytest.raises(BrokerRefused, match="TLS set-up"):
        open_blocking(settings)
