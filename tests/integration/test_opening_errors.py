"""A link that fails while it is being opened: refused for good, or only lost.

pika names both a probable refusal. A refusal (a wrong password, a missing virtual host)
is final and stops a side; a link lost while opening it (a broker starting or shutting
down resets it) is retried like any other loss.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import replace

import pika.frame
import pika.spec
import pytest

from broker.connection import open_blocking
from broker.errors import BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings
from tests.conftest import BROKER_HOST, vhost_amqp_url


@contextlib.contextmanager
def resetting_broker() -> Iterator[str]:
    """A listener that starts the AMQP handshake as a broker does, then resets the link
    when the client answers with its credentials: what a broker going down does."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        peer, _ = server.accept()
        with peer:
            peer.recv(8)  # "AMQP" and the protocol version
            start = pika.spec.Connection.Start(
                server_properties={"product": "a broker going down"},
                mechanisms="PLAIN",
                locales="en_US",
            )
            peer.sendall(pika.frame.Method(0, start).marshal())
            peer.recv(4096)  # Start-Ok, with the credentials
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    finally:
        server.close()
        thread.join(timeout=10)


def settings(url: str) -> BrokerSettings:
    return replace(BrokerSettings(url=url), socket_timeout=5.0, connection_attempts=1)


def test_a_link_reset_while_it_is_opened_is_lost_not_refused() -> None:
    with resetting_broker() as url, pytest.raises(ConnectionLost, match="being opened"):
        open_blocking(settings(url))


@pytest.mark.broker
def test_a_wrong_password_is_refused_for_good(broker: None) -> None:
    url = f"amqp://guest:not-the-password@{BROKER_HOST}:5672/%2F"
    with pytest.raises(BrokerRefused, match="authentication refused") as refused:
        open_blocking(settings(url))
    assert refused.value.code == 403


@pytest.mark.broker
def test_a_missing_virtual_host_is_refused_for_good(broker: None) -> None:
    url = vhost_amqp_url("setevnt-test-no-such-vhost")
    with pytest.raises(BrokerRefused, match="virtual host refused") as refused:
        open_blocking(settings(url))
    assert refused.value.code == 530
