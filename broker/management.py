"""The RabbitMQ management HTTP API: users, permissions, connections.

Used for enrollment (creating a client's least-privilege broker user) and revocation.
Errors become setevnt's: a refusal (401/403) is :class:`BrokerRefused`, an unreachable
API is :class:`ConnectionLost`.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from broker.errors import BrokerRefused, ConnectionLost
from broker.settings import BrokerSettings

MANAGEMENT_ENV = "SETEVNT_MANAGEMENT_URL"
PORT_OFFSET = 10_000  # management port = AMQP port + this (5672 -> 15672)


class NotFound(BrokerRefused):
    """The user, vhost or connection does not exist."""


@dataclass(frozen=True, slots=True)
class Management:
    base_url: str  # e.g. http://127.0.0.1:15672
    username: str
    password: str
    timeout: float = 10.0

    @classmethod
    def for_broker(cls, settings: BrokerSettings, url: str | None = None) -> Management:
        """The API of the broker ``settings`` points at, with the same credentials.

        Default: ``$SETEVNT_MANAGEMENT_URL``, else :func:`default_url`.
        """
        amqp = urlsplit(settings.first_url)
        chosen = url or os.environ.get(MANAGEMENT_ENV) or default_url(settings)
        return cls(
            chosen.rstrip("/"), unquote(amqp.username or "guest"), unquote(amqp.password or "")
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.base_url}/api{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code == 404:
                raise NotFound(f"management API: {method} {path}: not found", 404) from None
            raise BrokerRefused(
                f"management API: {method} {path}: {exc.code} {detail}", exc.code
            ) from None
        except OSError as exc:
            raise ConnectionLost(f"management API at {self.base_url}: {exc}") from None
        return json.loads(payload) if payload else None

    # -- the calls setevnt makes --------------------------------------------------------

    def put_user(self, name: str, password: str, tags: str = "") -> None:
        self.call("PUT", f"/users/{q(name)}", {"password": password, "tags": tags})

    def delete_user(self, name: str) -> None:
        self.call("DELETE", f"/users/{q(name)}")

    def user_exists(self, name: str) -> bool:
        return self.user(name) is not None

    def user(self, name: str) -> dict[str, Any] | None:
        """The user's record (name, tags, limits), or None when there is no such user."""
        try:
            found = self.call("GET", f"/users/{q(name)}")
        except NotFound:
            return None
        return found if isinstance(found, dict) else None

    def set_user_limits(self, name: str, limits: dict[str, int]) -> None:
        """Per-user limits such as ``max-connections`` and ``max-channels``."""
        for limit, value in limits.items():
            self.call("PUT", f"/user-limits/{q(name)}/{q(limit)}", {"value": value})

    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        self.call(
            "PUT",
            f"/permissions/{q(vhost)}/{q(user)}",
            {"configure": configure, "write": write, "read": read},
        )

    def set_topic_permissions(
        self, vhost: str, user: str, exchange: str, write: str, read: str
    ) -> None:
        self.call(
            "PUT",
            f"/topic-permissions/{q(vhost)}/{q(user)}",
            {"exchange": exchange, "write": write, "read": read},
        )

    def queue_exists(self, vhost: str, name: str) -> bool:
        try:
            self.call("GET", f"/queues/{q(vhost)}/{q(name)}")
        except NotFound:
            return False
        return True

    def user_connections(self, user: str) -> list[str]:
        connections = self.call("GET", "/connections") or []
        return [c["name"] for c in connections if c.get("user") == user]

    def close_connection(self, name: str, reason: str) -> None:
        # The reason travels in a header; the API closes the connection with it.
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.base_url}/api/connections/{q(name)}",
            method="DELETE",
            headers={"Authorization": f"Basic {token}", "X-Reason": reason},
        )
        try:
            urllib.request.urlopen(request, timeout=self.timeout).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # already gone is what we wanted
                raise BrokerRefused(f"closing connection {name}: {exc.code}", exc.code) from None
        except OSError as exc:
            raise ConnectionLost(f"management API at {self.base_url}: {exc}") from None


def default_url(settings: BrokerSettings) -> str:
    """The management API beside the AMQP listener, by RabbitMQ's own convention: port
    5672 + 10000 = 15672 (5671 -> https 15671), so a node on 5673 is found on 15673."""
    amqp = urlsplit(settings.first_url)
    tls = amqp.scheme == "amqps"
    port = (amqp.port or (5671 if tls else 5672)) + PORT_OFFSET
    host = amqp.hostname or "127.0.0.1"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
