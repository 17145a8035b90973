"""Broker connection settings: one frozen dataclass built from an AMQP URL.

A cluster is given as several comma-separated URLs, one per node, with the same
credentials and virtual host; connections try them in turn (:mod:`broker.connection`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
URL_ENV = "SETEVNT_AMQP_URL"
# "1": the broker is a cluster even behind a single URL (a load balancer): the shared
# queues are quorum queues. Several URLs say so by themselves.
CLUSTER_ENV = "SETEVNT_CLUSTER"
# For amqps:// URLs: the CA that signed the broker's certificate, and this side's own
# certificate and key when the broker asks for one (RabbitMQ's verify_peer).
TLS_ENV = {
    "ca_file": "SETEVNT_TLS_CA",
    "cert_file": "SETEVNT_TLS_CERT",
    "key_file": "SETEVNT_TLS_KEY",
}


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    url: str = DEFAULT_URL
    # Short heartbeats notice half-open connections quickly: pika checks every
    # heartbeat + 5 s and drops a link silent through one whole check.
    heartbeat: int = 20
    # A memory/disk alarm blocks publishers; never wait on it longer than this.
    blocked_connection_timeout: float = 30.0
    connection_attempts: int = 1
    socket_timeout: float = 5.0
    connection_name: str = "setevnt"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # None: a cluster when several URLs are given.
    cluster_flag: bool | None = None

    @classmethod
    def from_env(cls, url: str | None = None, **overrides: object) -> BrokerSettings:
        """Settings from an explicit URL, else ``$SETEVNT_AMQP_URL``, else the default."""
        chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
        validate_url(chosen)
        tls = {key: os.environ[env] for key, env in TLS_ENV.items() if os.environ.get(env)}
        flag = os.environ.get(CLUSTER_ENV, "").strip().lower()
        cluster = {"cluster_flag": flag in ("1", "true", "yes")} if flag else {}
        return replace(cls(url=chosen), **{**tls, **cluster, **overrides})  # type: ignore[arg-type]

    @property
    def urls(self) -> tuple[str, ...]:
        """One URL per broker node, in the order given."""
        return split_urls(self.url)

    @property
    def first_url(self) -> str:
        return self.urls[0]

    @property
    def cluster(self) -> bool:
        """The shared queues are quorum queues and client queues are spread over nodes."""
        return len(self.urls) > 1 if self.cluster_flag is None else self.cluster_flag

    def node(self, url: str) -> BrokerSettings:
        """The same settings pointing at one node only (still a cluster member)."""
        return replace(self, url=url, cluster_flag=self.cluster)

    @property
    def tls(self) -> bool:
        return urlsplit(self.first_url).scheme == "amqps"

    @property
    def username(self) -> str:
        from urllib.parse import unquote

        return unquote(urlsplit(self.first_url).username or "guest")

    @property
    def host(self) -> str:
        return urlsplit(self.first_url).hostname or "127.0.0.1"

    def named(self, name: str) -> BrokerSettings:
        return replace(self, connection_name=name)

    @property
    def vhost(self) -> str:
        from urllib.parse import unquote

        path = urlsplit(self.first_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def redacted(self) -> str:
        """The URL(s) without a password, for logs and error messages."""
        return ",".join(redact(url) for url in self.urls)


def split_urls(url: str) -> tuple[str, ...]:
    """``amqp://a/,amqp://b/`` -> each URL; blanks around the commas are ignored."""
    return tuple(part.strip() for part in url.split(",") if part.strip()) or (url,)


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: whatever the URL's shape,
    even one too broken to parse, a password never reaches a log or an error message."""
    scheme, _, rest = url.partition("://")
    if not rest:
        return "***" if "@" in url else url
    credentials, at, location = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}" if ":" in credentials else url


def validate_url(url: str) -> None:
    """One URL, or several comma-separated ones with the same scheme, user and vhost."""
    urls = split_urls(url)
    for one in urls:
        _validate_one(one)
    shapes = {_shape(one) for one in urls}
    if len(shapes) > 1:
        raise ValueError(
            f"the broker URLs {redact_all(url)!r} differ in scheme, user or virtual host: "
            "the nodes of one cluster share them"
        )


def redact_all(url: str) -> str:
    return ",".join(redact(one) for one in split_urls(url))


def _shape(url: str) -> tuple[str, str | None, str | None, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.username, parts.password, parts.path or "/"


def _validate_one(url: str) -> None:
    try:
        parts = urlsplit(url)
        hostname, _port = parts.hostname, parts.port  # a bad port raises here
    except ValueError as exc:
        raise ValueError(f"not an AMQP URL: {redact(url)!r} ({exc})") from None
    if parts.scheme not in ("amqp", "amqps") or not hostname:
        raise ValueError(
            f"not an AMQP URL: {redact(url)!r} (expected amqp://user:pass@host:port/vhost)"
        )
