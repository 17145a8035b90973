"""A throwaway TLS-only RabbitMQ node beside the machine's broker, for TLS tests.

Own node name, ports, data and cookie (HOME) in a temporary directory; certificates from
a fresh CA made with openssl. Never joined to, and never touching, the machine's broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.integration.helpers import Process, wait_for
from tests.integration.monitoring import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# What Erlang's TLS server logs when it refuses a client that sent no certificate.
CERTIFICATE_REQUIRED_ALERT = "generated SERVER ALERT: Fatal - Certificate required"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory: Path) -> Certificates:
    _openssl(
        "req",
        "-x509",
        *EC,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=setevnt-test-ca",
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=setevnt-client")):
        _openssl(
            "req",
            *EC,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=directory,
        )
        extra = ["-extfile", "san.ext"] if name == "server" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extra,
            cwd=directory,
        )
    return Certificates(
        directory / "ca.pem",
        directory / "client.pem",
        directory / "client.key",
        directory / "server.pem",
        directory / "server.key",
    )


class TlsNode:
    def __init__(self, directory: Path) -> None:
        if not Path(RABBITMQ_SERVER).exists() or not shutil.which("openssl"):
            raise FileNotFoundError("rabbitmq-server and openssl are needed for the TLS node")
        self.certs = make_certificates(directory)
        self.port = free_port()
        (directory / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.certs.ca}\n"
            f"ssl_options.certfile = {self.certs.server_cert}\n"
            f"ssl_options.keyfile = {self.certs.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        name = f"setevnt-tls-{uuid.uuid4().hex[:6]}@localhost"
        self.log = directory / "log" / f"{name}.log"
        env = {
            "HOME": str(directory),  # its own Erlang cookie
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        }
        self.process = Process([RABBITMQ_SERVER], env=env)
        self.process.wait_line("Starting broker... completed", timeout=90)

    @property
    def url(self) -> str:
        return f"amqps://guest:guest@localhost:{self.port}/%2F"

    def env(self, *, ca: bool = True, client_cert: bool = True) -> dict[str, str]:
        values = {}
        if ca:
            values["SETEVNT_TLS_CA"] = str(self.certs.ca)
        if client_cert:
            values["SETEVNT_TLS_CERT"] = str(self.certs.client_cert)
            values["SETEVNT_TLS_KEY"] = str(self.certs.client_key)
        return values

    def certificate_alerts(self) -> int:
        """How many clients this node has refused for sending no certificate."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count(CERTIFICATE_REQUIRED_ALERT)

    def stop(self) -> None:
        self.process.terminate(timeout=60)
        wait_for(lambda: self.process.proc.poll() is not None, 5, "TLS node stopped")


def clean_tls_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SETEVNT_TLS_")}
