"""Agent configuration: one frozen dataclass, loaded from TOML with environment overrides.

Precedence: command-line flags, then ``SETEVNT_AMQP_URL`` / ``SETEVNT_CLIENT_ID``, then the
file, then defaults. See ``deploy/agent.example.toml`` for every key.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from broker.settings import DEFAULT_URL, URL_ENV, BrokerSettings
from schemas.catalog import DEFAULT_CATALOG, PLATFORMS, Catalog
from schemas.messages import ID_PATTERN
from schemas.signing import Verifier

CLIENT_ENV = "SETEVNT_CLIENT_ID"
PUBLIC_KEY_ENV = "SETEVNT_DISPATCHER_PUBLIC_KEY"
# What deploy/agent.example.toml ships in place of a key: it stands for no key at all.
PUBLIC_KEY_PLACEHOLDER = "PASTE-THE-DISPATCHER-PUBLIC-KEY-HERE"
NO_SECURITY_DECISION = (
    "[security]: set dispatcher_public_key to the key printed by `setevnt-dispatcher "
    f"keygen` and `enroll` (or ${PUBLIC_KEY_ENV}), or allow_unsigned = true for development"
)
NO_JOURNAL = (
    "[agent] journal is not set: without a journal on disk a restarted agent would run "
    "again the commands it already ran (set it, or pass --journal PATH)"
)
# The client queue's message TTL: no command older than this is still delivered.
DEFAULT_MAX_LIFETIME = 86400.0


class ConfigError(ValueError):
    """The agent's configuration is unusable; the message says which key and why."""


PROBES = ("lock", "process", "marker", "command")
DEFAULT_LOCK = "/run/setevnt/distribution.lock"
DEFAULT_PROCESSES = ("smsapm32", "msiexec", "dpkg", "apt", "apt-get", "rpm", "yum")
# KB Q283130: these stop a running distribution; CQMGR32 and the other cycles do not.
# Client setup (a site component, the drift remediation's upgrade event, KB Q174961)
# restarts the client services, so it waits too on a client whose catalog has it.
DEFAULT_DISRUPTIVE = (
    "CCIM32_STARTCYCLE",
    "CCIM32_CLOSE",
    "CLISVCL_CLOSE",
    "CLISVC95_CLOSE",
    "SMSAPM32_CLOSE",
    "SMSMON32_CLOSE",
    "CLISETUP_STARTCYCLE",
)
COPYLIST_MAX = 64  # what a heartbeat may carry


@dataclass(frozen=True)
class GuardConfig:
    """The ``[guard]`` table: which probes say a distribution runs, which events wait."""

    probes: tuple[str, ...] = ("lock", "process")
    lock: str = DEFAULT_LOCK
    processes: tuple[str, ...] = DEFAULT_PROCESSES
    markers: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    busy_exit_codes: tuple[int, ...] = (0,)
    command_timeout: float = 10.0
    poll_interval: float = 1.0
    max_deferral: float = 86400.0
    disruptive: tuple[str, ...] = DEFAULT_DISRUPTIVE
    spool: str | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown or len(set(self.probes)) != len(self.probes):
            raise ConfigError(f"guard.probes: each of {', '.join(PROBES)} at most once")
        for probe, setting in (
            ("process", "processes"),
            ("marker", "markers"),
            ("command", "command"),
        ):
            if probe in self.probes and not getattr(self, setting):
                raise ConfigError(f"guard: probe {probe!r} needs a non-empty guard.{setting}")
        for name in ("command_timeout", "poll_interval", "max_deferral"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"guard.{name} must be positive")


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: whose commands this agent obeys.



    ``public_keys`` are the dispatcher's Ed25519 public keys (several while a key is being
    rotated). ``allow_unsigned`` accepts commands without a signature — for development
    only; a command that carries a bad signature is refused either way.
    """

    public_keys: tuple[str, ...] = ()
    allow_unsigned: bool = False
    max_clock_skew: float = 300.0

    def __post_init__(self) -> None:
        if not self.public_keys and not self.allow_unsigned:
            raise ConfigError(NO_SECURITY_DECISION)
        if self.max_clock_skew <= 0:
            raise ConfigError("security.max_clock_skew must be positive")
        if self.public_keys:
            try:
                Verifier(self.public_keys)
            except ValueError as exc:
                raise ConfigError(f"[security]: {exc}") from None


@dataclass(frozen=True)
class AgentConfig:
    client_id: str
    platform: str = "nt"
    groups: tuple[str, ...] = ()
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    backend: str = "simulated"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    journal: str | None = None
    hello_interval: float = 60.0
    # Commands living longer than this, or starting later than this from now, are refused:
    # it bounds what the journal and the spool hold, whatever is sent.
    max_command_lifetime: float = DEFAULT_MAX_LIFETIME
    allow_force: bool = False
    catalog: Catalog = DEFAULT_CATALOG
    component_versions: Mapping[str, str] = field(default_factory=dict)
    guard: GuardConfig = field(default_factory=GuardConfig)
    # None: no decision made. Code that builds a config (tests, the simulator) accepts
    # unsigned commands; `setevnt-agent run` refuses to start. See SecurityConfig.
    security: SecurityConfig | None = None
    # [metrics] port: the agent's own /metrics. None (the default) serves nothing.
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    # The installed client component set's version, reported in every heartbeat (the
    # dispatcher compares it with the site's): a fixed value, or a file an installer
    # rewrites, read at each heartbeat (agent.copylist). The file wins when readable.
    copylist_version: str | None = None
    copylist_version_file: str | None = None

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.client_id):
            raise ConfigError(
                f"client_id {self.client_id!r}: 1-64 of letters, digits, '_', '.', '-'"
            )
        if self.platform not in PLATFORMS:
            raise ConfigError(f"platform {self.platform!r}: choose one of {', '.join(PLATFORMS)}")
        for group in self.groups:
            if not ID_PATTERN.fullmatch(group):
                raise ConfigError(f"group {group!r}: 1-64 of letters, digits, '_', '.', '-'")
        if self.hello_interval <= 0:
            raise ConfigError("agent.hello_interval must be positive")
        if not 0 < self.max_command_lifetime < math.inf:
            raise ConfigError("agent.max_command_lifetime must be a positive number of seconds")
        if self.copylist_version is not None and not valid_copylist(self.copylist_version):
            raise ConfigError(
                f"copylist_version {self.copylist_version!r}: 1-{COPYLIST_MAX} printable "
                "characters without leading or trailing spaces"
            )
        unknown = [e for e in self.guard.disruptive if self.catalog.event(e) is None]
        # The default list may name events a site removed by redefining a component.
        if unknown and self.guard.disruptive != DEFAULT_DISRUPTIVE:
            raise ConfigError(f"guard.disruptive: unknown COMPONENT_EVENT {', '.join(unknown)}")


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    env = os.environ if environ is None else environ
    data = _read(path) if path is not None else {}
    broker_table = _table(data, "broker")
    agent_table = _table(data, "agent")
    backend_table = _table(data, "backend")
    options = dict(overrides or {})

    client_id = options.pop("client_id", None) or env.get(CLIENT_ENV) or data.get("client_id")
    if not client_id:
        raise ConfigError(f"no client id: set client_id in the config file or ${CLIENT_ENV}")
    url = options.pop("url", None) or env.get(URL_ENV) or broker_table.get("url")
    try:
        # Not from_env(None): that would read os.environ even when ``environ`` is given.
        broker = BrokerSettings.from_env(url or DEFAULT_URL)
        if "heartbeat" in broker_table:
            broker = replace(broker, heartbeat=int(broker_table["heartbeat"]))
        tls: dict[str, Any] = {
            k: str(broker_table[k])
            for k in ("ca_file", "cert_file", "key_file")
            if k in broker_table
        }
        broker = replace(broker, **tls)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"broker: {exc}") from None
    groups = data.get("groups", [])
    if not isinstance(groups, list):
        raise ConfigError('groups must be a list of names, e.g. groups = ["lab-1"]')
    kind = options.pop("backend", None) or backend_table.get("type", "simulated")
    journal = options.pop("journal", None) or agent_table.get("journal")
    try:
        return AgentConfig(
            client_id=str(client_id),
            platform=str(data.get("platform", "nt")),
            groups=tuple(str(g) for g in groups),
            broker=broker.named(f"setevnt-agent {client_id}"),
            backend=str(kind),
            backend_options=_table(backend_table, str(kind)),
            journal=journal,
            hello_interval=float(agent_table.get("hello_interval", 60.0)),
            max_command_lifetime=float(
                agent_table.get("max_command_lifetime", DEFAULT_MAX_LIFETIME)
            ),
            allow_force=bool(agent_table.get("allow_force", False)),
            catalog=DEFAULT_CATALOG.extended(
                Catalog.components_from_config(data.get("components", []))
            ),
            component_versions={str(k): str(v) for k, v in _table(data, "versions").items()},
            guard=_guard(_table(data, "guard"), journal),
            security=_security(_table(data, "security"), env),
            metrics_port=_metrics_port(_table(data, "metrics")),
            metrics_addr=str(_table(data, "metrics").get("addr", "127.0.0.1")),
            copylist_version=_optional_str(data, "copylist_version"),
            copylist_version_file=_optional_str(data, "copylist_version_file"),
        )
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"configuration: {exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def valid_copylist(version: str) -> bool:
    return 0 < len(version) <= COPYLIST_MAX and version == version.strip() and version.isprintable()


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f'{key} must be a string, e.g. {key} = "..."')
    return value


def _metrics_port(table: Mapping[str, Any]) -> int | None:
    port = table.get("port")
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ConfigError("metrics.port must be a TCP port number (0 picks a free one)")
    return port


def _security(table: Mapping[str, Any], env: Mapping[str, str]) -> SecurityConfig | None:
    """``[security]``, or None when neither the file nor the environment says anything.

    None is not a licence to run unsigned: ``setevnt-agent run`` refuses to start without
    a decision; tools that run no commands (``hold``, ``check``) do not need one.
    """
    if not table and not env.get(PUBLIC_KEY_ENV):
        return None
    unknown = sorted(
        set(table)
        - {"dispatcher_public_key", "dispatcher_public_keys", "allow_unsigned", "max_clock_skew"}
    )
    if unknown:
        raise ConfigError(f"[security]: unknown key {', '.join(unknown)}")
    keys = list(
        _strings("security.dispatcher_public_keys", table.get("dispatcher_public_keys", []))
    )
    if "dispatcher_public_key" in table:
        keys.insert(0, str(table["dispatcher_public_key"]))
    if env.get(PUBLIC_KEY_ENV):
        keys.insert(0, env[PUBLIC_KEY_ENV])
    keys = [key for key in keys if key.strip() != PUBLIC_KEY_PLACEHOLDER]
    allow = table.get("allow_unsigned", False)
    if not isinstance(allow, bool):
        raise ConfigError("security.allow_unsigned must be true or false")
    if not keys and not allow:
        return None  # the example's placeholder alone: `run` refuses, `hold` and `check` work
    return SecurityConfig(
        public_keys=tuple(keys),
        allow_unsigned=allow,
        max_clock_skew=float(table.get("max_clock_skew", 300.0)),
    )


def _guard(table: Mapping[str, Any], journal: str | None) -> GuardConfig:
    """``[guard]``; the spool defaults to a directory beside the journal."""
    known = {f.name for f in fields(GuardConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[guard]: unknown key {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("probes", "processes", "markers", "command", "disruptive"):
            values[key] = _strings(f"guard.{key}", value)
        elif key == "busy_exit_codes":
            values[key] = tuple(int(v) for v in _list(f"guard.{key}", value))
        elif key in ("command_timeout", "poll_interval", "max_deferral"):
            values[key] = float(value)
        else:
            values[key] = str(value)
    if "spool" not in values and journal:
        values["spool"] = f"{journal}.spool"
    return GuardConfig(**values)


def _list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in _list(key, value))


def _read(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as source:
            return tomllib.load(source)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value
