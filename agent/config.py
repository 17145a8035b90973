"""Agent configuration: one frozen dataclass, loaded from TOML with environment overrides.

Precedence: command-line flags, then ``SETEVNT_AMQP_URL`` / ``SETEVNT_CLIENT_ID``, then the
file, then defaults. See ``deploy/agent.example.toml`` for every key.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import config_shape
from agent.config_shape import BACKEND_NAMES, ShapeError
from agent.windows.paths import defaults
from broker.settings import DEFAULT_URL, URL_ENV, BrokerSettings
from broker.watchdog import DEFAULT_STALL_TIMEOUT
from schemas.catalog import DEFAULT_CATALOG, PLATFORMS, Catalog
from schemas.rules import ID_PATTERN
from schemas.signing import Verifier

log = logging.getLogger(__name__)

CLIENT_ENV = "SETEVNT_CLIENT_ID"
PUBLIC_KEY_ENV = "SETEVNT_DISPATCHER_PUBLIC_KEY"
# What deploy/agent.example.toml ships in place of a key: it stands for no key at all.
PUBLIC_KEY_PLACEHOLDER = "PASTE-THE-DISPATCHER-PUBLIC-KEY-HERE"
NO_SECURITY_DECISION = (
    "[security]: set dispatcher_public_key to the key printed by `setevnt-dispatcher "
    f"keygen` and `enroll` (or ${PUBLIC_KEY_ENV}), or allow_unsigned = true for development"
)
NO_BACKEND = (
    f"[backend] type is not set: choose {', '.join(BACKEND_NAMES[:-1])} or {BACKEND_NAMES[-1]}"
)
ID_RULE = "1-64 of letters, digits, '_', '.', '-'"
NO_CATALOG = config_shape.Context(events=(), components=())
NO_JOURNAL = (
    "[agent] journal is not set: without a journal on disk a restarted agent would run "
    "again the commands it already ran (set it, or pass --journal PATH)"
)
# The client queue's message TTL: no command older than this is still delivered.
DEFAULT_MAX_LIFETIME = 86400.0


class ConfigError(ValueError):
    """The agent's configuration is unusable; the message says which key and why."""


PROBES = ("lock", "process", "marker", "command")
PLATFORM_DEFAULTS = defaults()  # %ProgramData%\setevnt on Windows (agent.windows.paths)
DEFAULT_LOCK = PLATFORM_DEFAULTS.lock
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
    # None: no backend chosen; `setevnt-agent run` refuses to start ("simulated" is
    # never a default: an agent that fakes success must be asked for by name).
    backend: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    journal: str | None = None
    hello_interval: float = 60.0
    # The broker loop not back for this long: exit for a restart (broker.watchdog).
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
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
    # The file this was loaded from, named in the messages of checks made later.
    source: str | None = None

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.client_id):
            raise ConfigError(f"client_id: {self.client_id!r} is not a client id: {ID_RULE}")
        if self.platform not in PLATFORMS:
            raise ConfigError(f"platform {self.platform!r}: choose one of {', '.join(PLATFORMS)}")
        for group in self.groups:
            if not ID_PATTERN.fullmatch(group):
                raise ConfigError(f"groups: {group!r} is not a group name: {ID_RULE}")
        if self.hello_interval <= 0:
            raise ConfigError("agent.hello_interval must be positive")
        if not 0 < self.stall_timeout < math.inf:
            raise ConfigError("agent.stall_timeout must be a positive number of seconds")
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
            hint = config_shape.suggestion(unknown[0], self.catalog.event_names())
            raise ConfigError(f"guard.disruptive: unknown event {unknown[0]}{hint}")


def default_path(given: str | None) -> str | None:
    """The config file to read: the one given, else the platform's when it exists (Windows)."""
    if given is not None:
        return given
    fallback = PLATFORM_DEFAULTS.config
    return fallback if fallback is not None and Path(fallback).is_file() else None


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """The configuration, every error one line naming the key (and the file) at fault."""
    env = os.environ if environ is None else environ
    where = f"config {path}: " if path is not None else ""
    try:
        data = config_shape.check(_read(path) if path is not None else {})
    except ShapeError as exc:
        raise ConfigError(f"{where}{exc}") from None
    try:
        config = _build(data, env, dict(overrides or {}), where)
        return replace(config, source=str(path)) if path is not None else config
    except ConfigError:
        raise
    except (TypeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{where}{exc}") from None


def _build(
    data: dict[str, Any], env: Mapping[str, str], options: dict[str, Any], where: str
) -> AgentConfig:
    agent_table = data.get("agent", {})
    client_id, said = _first(
        ("--client", options.pop("client_id", None)),
        (f"${CLIENT_ENV}", env.get(CLIENT_ENV)),
        (f"{where}client_id", data.get("client_id")),
    )
    if not client_id:
        raise ConfigError(f"no client id: set client_id in the config file or ${CLIENT_ENV}")
    if not ID_PATTERN.fullmatch(client_id):
        raise ConfigError(f"{said}: {client_id!r} is not a client id: {ID_RULE}")
    broker = _broker(data.get("broker", {}), env, options.pop("url", None), where)
    kind, options_table = _backend(data.get("backend", {}), options.pop("backend", None), where)
    journal = (
        options.pop("journal", None) or agent_table.get("journal") or PLATFORM_DEFAULTS.journal
    )
    try:
        return _config(data, client_id, broker, kind, options_table, journal, env)
    except ValueError as exc:  # the dataclasses' own checks, of values from the file
        raise ConfigError(f"{where}{exc}") from None


def _config(
    data: dict[str, Any],
    client_id: str,
    broker: BrokerSettings,
    kind: str | None,
    options_table: dict[str, Any],
    journal: str | None,
    env: Mapping[str, str],
) -> AgentConfig:
    agent_table = data.get("agent", {})
    return AgentConfig(
        client_id=client_id,
        platform=data.get("platform", "nt"),
        groups=tuple(data.get("groups", ())),
        broker=broker.named(f"setevnt-agent {client_id}"),
        backend=kind,
        backend_options=options_table,
        journal=journal,
        hello_interval=agent_table.get("hello_interval", 60.0),
        stall_timeout=agent_table.get("stall_timeout", DEFAULT_STALL_TIMEOUT),
        max_command_lifetime=agent_table.get("max_command_lifetime", DEFAULT_MAX_LIFETIME),
        allow_force=agent_table.get("allow_force", False),
        catalog=config_shape.site_catalog(data),
        component_versions=dict(data.get("versions", {})),
        guard=_guard(data.get("guard", {}), journal),
        security=_security(data.get("security", {}), env),
        metrics_port=data.get("metrics", {}).get("port"),
        metrics_addr=data.get("metrics", {}).get("addr", "127.0.0.1"),
        copylist_version=data.get("copylist_version"),
        copylist_version_file=data.get("copylist_version_file"),
    )


def _first(*candidates: tuple[str, Any]) -> tuple[Any, str]:
    """The first value given, and where it was given (for messages)."""
    for label, value in candidates:
        if value:
            return value, label
    return None, ""


def _broker(
    table: Mapping[str, Any], env: Mapping[str, str], flag: str | None, where: str
) -> BrokerSettings:
    url, said = _first(
        ("--url", flag),
        (f"${URL_ENV}", env.get(URL_ENV)),
        (f"{where}broker.url", table.get("url")),
    )
    try:
        # Not from_env(None): that would read os.environ even when ``environ`` is given.
        broker = BrokerSettings.from_env(url or DEFAULT_URL)
    except ValueError as exc:
        raise ConfigError(f"{said}: {exc}") from None
    if url and table.get("url") and said in ("--url", f"${URL_ENV}"):
        _warn_if_another_user(said, broker, BrokerSettings(url=table["url"]), where)
    if "heartbeat" in table:
        seconds = table["heartbeat"]
        broker = replace(broker, heartbeat=max(1, round(seconds)) if seconds else 0)
    tls = {k: table[k] for k in ("ca_file", "cert_file", "key_file") if k in table}
    return replace(broker, **tls)


def _warn_if_another_user(
    said: str, used: BrokerSettings, written: BrokerSettings, where: str
) -> None:
    """An agent connecting as another broker user than its own has every ack dropped."""
    if used.username != written.username:
        log.warning(
            "%s overrides the [broker] url of %sit connects as broker user %s, not %s: "
            "acks from another user than the client's own are dropped (wrong-user-id)",
            said,
            where.removesuffix(": ").removeprefix("config ") + ": " if where else "the file: ",
            used.username,
            written.username,
        )


def _backend(table: Mapping[str, Any], flag: str | None, where: str) -> tuple[Any, Any]:
    """The chosen backend (None when none is) and its own table."""
    kind: str | None
    if flag:
        try:
            kind = config_shape.backend_name("--backend", flag, NO_CATALOG)
        except ShapeError as exc:
            raise ConfigError(str(exc)) from None
    else:
        kind = table.get("type")
    if kind is None:
        return None, {}
    names = [kind, *(a for a, n in config_shape.BACKEND_ALIASES.items() if n == kind)]
    given = [name for name in names if name in table]
    if len(given) > 1:
        raise ConfigError(
            f"{where}[backend.{given[0]}] and [backend.{given[1]}] are one backend: keep one"
        )
    return kind, table.get(given[0], {}) if given else {}


def valid_copylist(version: str) -> bool:
    return 0 < len(version) <= COPYLIST_MAX and version == version.strip() and version.isprintable()


def _security(table: Mapping[str, Any], env: Mapping[str, str]) -> SecurityConfig | None:
    """``[security]``, or None when neither the file nor the environment says anything.

    None is not a licence to run unsigned: ``setevnt-agent run`` refuses to start without
    a decision; ``hold`` needs none.
    """
    if not table and not env.get(PUBLIC_KEY_ENV):
        return None
    keys = list(table.get("dispatcher_public_keys", []))
    if "dispatcher_public_key" in table:
        keys.insert(0, table["dispatcher_public_key"])
    if env.get(PUBLIC_KEY_ENV):
        keys.insert(0, env[PUBLIC_KEY_ENV])
    keys = [key for key in keys if key.strip() != PUBLIC_KEY_PLACEHOLDER]
    allow = table.get("allow_unsigned", False)
    if not keys and not allow:
        return None  # the example's placeholder alone: `run` and `check` refuse
    return SecurityConfig(
        public_keys=tuple(keys),
        allow_unsigned=allow,
        max_clock_skew=table.get("max_clock_skew", 300.0),
    )


def _guard(table: Mapping[str, Any], journal: str | None) -> GuardConfig:
    """``[guard]``; the spool defaults to a directory beside the journal."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    if "spool" not in values and journal:
        values["spool"] = f"{journal}.spool"
    return GuardConfig(**values)


def _read(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as source:
            return tomllib.load(source)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: the file does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror or exc}") from None
