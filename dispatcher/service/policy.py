"""Who may trigger what through ``setevnt.requests``, and how much: a TOML policy, default deny.

The requester is the request's AMQP ``user_id``, which the broker checks against the
connection's user, so a rule per broker user is a rule per authenticated service::

    [limits]                           # every user's caps and quotas (these are the defaults)
    max_ttl = "24h"                    # a command's validity: at most the client queues' TTL
    max_spread = "1h"                  # start times spread, or publishing paced by a rate
    max_delivery_wait = "5m"
    max_rate = "1000/s"                # a request without a rate is paced at this one
    max_requests = 30                  # requests accepted per window and requester
    max_targets_per_window = 1000      # clients targeted per window and requester
    window = "1m"
    max_running = 2                    # request storms publishing at once per requester

    [users.helpdesk]
    events = ["*_STARTCYCLE"]          # COMPONENT_EVENT patterns (fnmatch, case-sensitive)
    targets = ["client"]               # client | group | all
    max_targets = 1
    force = false                      # may ask agents to bypass the distribution guard
    max_requests = 10                  # any [limits] key, for this user only

A user without a table may do nothing; a rule allows only what it lists. A request that
asks for more than a cap is refused ``over-limit`` (fix the request); one beyond a quota
``rate-limited`` (retry later, :mod:`dispatcher.service.quotas`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from dispatcher.storms.storm import MAX_TTL, parse_rate
from schemas.durations import format_duration, parse_duration
from schemas.messages import RefusalReason, TriggerRequest
from schemas.refusals import RequestRefused

POLICY_ENV = "SETEVNT_POLICY_FILE"
TARGET_KINDS = ("client", "group", "all")
RULE_KEYS = ("events", "targets", "max_targets", "force")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one request may ask for, quotas on what one requester may ask."""

    max_ttl: float = MAX_TTL
    max_spread: float = 3600.0
    max_delivery_wait: float = 300.0
    max_rate: float = 1000.0
    max_requests: int = 30
    max_targets_per_window: int = 1000
    window: float = 60.0
    max_running: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.max_ttl <= MAX_TTL:
            raise ValueError(
                f"max_ttl: at most {format_duration(MAX_TTL)} (the client queues' message TTL)"
            )
        if not self.max_spread < self.max_ttl:
            raise ValueError(
                f"max_spread {format_duration(self.max_spread)}: must be shorter than "
                f"max_ttl {format_duration(self.max_ttl)}, or late clients expire"
            )

    def check(self, request: TriggerRequest) -> None:
        """Refuse ``over-limit`` a request that asks for more than a cap allows."""
        _cap("ttl", request.ttl, "max_ttl", self.max_ttl)
        _cap("spread", request.spread, "max_spread", self.max_spread)
        _cap("delivery_wait", request.delivery_wait, "max_delivery_wait", self.max_delivery_wait)
        if request.rate is not None and request.rate > self.max_rate:
            _over(f"rate {request.rate:g}/s is above max_rate {self.max_rate:g}/s")

    def check_count(self, count: int, rate: float | None) -> None:
        """Refuse ``over-limit`` a request too large for a window, or paced too slowly."""
        if count > self.max_targets_per_window:
            _over(
                f"{count} targets are more than max_targets_per_window "
                f"{self.max_targets_per_window} (per {format_duration(self.window)})"
            )
        # A rate below max_rate spreads the commands as a spread does, and holds a worker
        # meanwhile: max_spread bounds both.
        pace = rate or self.max_rate
        publishing = (count - 1) / pace
        if publishing > max(self.max_spread, (count - 1) / self.max_rate):
            _over(
                f"rate {pace:g}/s publishes {count} commands over {format_duration(publishing)}, "
                f"above max_spread {format_duration(self.max_spread)}: raise the rate or ask "
                "for a spread"
            )


@dataclass(frozen=True, slots=True)
class Rule:
    events: tuple[str, ...] = ()
    targets: frozenset[str] = frozenset()
    max_targets: int = 0
    force: bool = False
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_table(cls, path: str, table: Mapping[str, object], limits: Limits) -> Rule:
        events = _strings(f"{path}.events", table.get("events", []))
        kinds = _strings(f"{path}.targets", table.get("targets", []))
        if set(kinds) - set(TARGET_KINDS):
            raise ValueError(f"{path}.targets: each one of {', '.join(TARGET_KINDS)}")
        max_targets = table.get("max_targets", 0)
        force = table.get("force", False)
        if not isinstance(max_targets, int) or isinstance(max_targets, bool) or max_targets < 0:
            raise ValueError(f"{path}.max_targets: a count >= 0")
        if not isinstance(force, bool):
            raise ValueError(f"{path}.force: true or false")
        own = read_limits(path, {k: v for k, v in table.items() if k not in RULE_KEYS}, limits)
        return cls(tuple(events), frozenset(kinds), max_targets, force, own)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: Mapping[str, Rule]
    source: str = "no policy"
    limits: Limits = field(default_factory=Limits)  # [limits]: whoever has no rule of their own

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        """The policy in ``path``, else ``$SETEVNT_POLICY_FILE``, else deny everything."""
        chosen = path or os.environ.get(POLICY_ENV)
        if not chosen:
            return cls({})
        try:
            data = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"policy {chosen}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"policy {chosen}: {exc}") from None
        return cls.from_data(data, str(chosen))

    @classmethod
    def from_data(cls, data: Mapping[str, object], source: str = "policy") -> Policy:
        where = "policy" if source == "policy" else f"policy {source}"
        try:
            unknown = sorted(set(data) - {"users", "limits"})
            if unknown:
                raise ValueError(f"unknown key {', '.join(unknown)}: [limits], [users.NAME] only")
            limits = read_limits("limits", _table("limits", data.get("limits", {})), Limits())
            users = _table("users", data.get("users", {}))
            rules = {
                user: Rule.from_table(f"users.{user}", _table(f"users.{user}", table), limits)
                for user, table in users.items()
            }
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return cls(rules, source, limits)

    def limits_for(self, user: str) -> Limits:
        rule = self.rules.get(user)
        return rule.limits if rule is not None else self.limits

    def authorize(self, user: str, request: TriggerRequest) -> None:
        """Raise :class:`RequestRefused` unless ``user`` may make this request."""
        rule = self._rule(user)
        if not any(fnmatch.fnmatchcase(request.event, p) for p in rule.events):
            _deny(f"{user} may not trigger {request.event}")
        for kind in kinds_of(request):
            if kind not in rule.targets:
                _deny(f"{user} may not target {'all clients' if kind == 'all' else kind + 's'}")
        if request.force and not rule.force:
            _deny(f"{user} may not force past the distribution guard")

    def authorize_count(self, user: str, count: int) -> None:
        limit = self._rule(user).max_targets
        if count > limit:
            _deny(f"{user} may target at most {limit} client(s), this request names {count}")

    def _rule(self, user: str) -> Rule:
        rule = self.rules.get(user)
        if rule is None:
            _deny(f"{user} has no rule in {self.source}")
        return rule


def kinds_of(request: TriggerRequest) -> list[str]:
    flags = {"client": bool(request.clients), "group": bool(request.groups), "all": request.all}
    return [kind for kind, used in flags.items() if used]


# -- reading [limits] and a user's own limits ----------------------------------------------


def _seconds(path: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f'{path}: a duration (e.g. "30s", "5m", "1h30m") or seconds')
    if not (seconds >= 0 if zero_ok else seconds > 0) or not math.isfinite(seconds):
        raise ValueError(f"{path}: must be {'>= 0' if zero_ok else 'positive'}")
    return seconds


def _duration(path: str, value: object) -> float:
    return _seconds(path, value)


def _spread(path: str, value: object) -> float:
    """Zero is a cap too: the user's requests may not spread their clients' start times."""
    return _seconds(path, value, zero_ok=True)


def _rate(path: str, value: object) -> float:
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'{path}: a rate (e.g. "200/s", "600/m") or commands per second')
    if not 0 < value < math.inf:
        raise ValueError(f"{path}: must be positive")
    return float(value)


def _count(path: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: a count >= 1")
    return value


_READERS: dict[str, Callable[[str, object], float | int]] = {
    "max_ttl": _duration,
    "max_spread": _spread,
    "max_delivery_wait": _duration,
    "max_rate": _rate,
    "max_requests": _count,
    "max_targets_per_window": _count,
    "window": _duration,
    "max_running": _count,
}


def read_limits(path: str, table: Mapping[str, object], base: Limits) -> Limits:
    """``base`` with what ``table`` (the ``[limits]`` table, or a user's) changes."""
    unknown = sorted(set(table) - set(_READERS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(f'{path}.{key}' for key in unknown)}")
    changes = {key: _READERS[key](f"{path}.{key}", value) for key, value in table.items()}
    try:
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    except ValueError as exc:  # a rule between two keys: name the key when this table set it
        key = str(exc).split(" ", 1)[0].split(":", 1)[0]
        raise ValueError(f"{path}.{exc}" if key in table else f"{path}: {exc}") from None


def _table(path: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a table ([{path}])")
    return value


def _strings(path: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: a list of strings")
    return value


def _cap(name: str, asked: float | None, cap_name: str, cap: float) -> None:
    if asked is not None and asked > cap:
        _over(f"{name} {format_duration(asked)} is above {cap_name} {format_duration(cap)}")


def _over(detail: str) -> NoReturn:
    raise RequestRefused(RefusalReason.OVER_LIMIT, detail)


def _deny(detail: str) -> NoReturn:
    raise RequestRefused(RefusalReason.NOT_PERMITTED, detail)
