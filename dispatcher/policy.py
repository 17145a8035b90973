"""Who may trigger what through ``setevnt.requests``: a TOML policy, default deny.

The requester is the request's AMQP ``user_id``, which the broker checks against the
connection's user, so a rule per broker user is a rule per authenticated service::

    [users.helpdesk]
    events = ["*_STARTCYCLE"]          # COMPONENT_EVENT patterns (fnmatch, case-sensitive)
    targets = ["client"]               # client | group | all
    max_targets = 1
    force = false                      # may ask agents to bypass the distribution guard

A user without a table may do nothing; a rule allows only what it lists.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from schemas.messages import RefusalReason, TriggerRequest
from schemas.refusals import RequestRefused

POLICY_ENV = "SETEVNT_POLICY_FILE"
TARGET_KINDS = ("client", "group", "all")


@dataclass(frozen=True, slots=True)
class Rule:
    events: tuple[str, ...] = ()
    targets: frozenset[str] = frozenset()
    max_targets: int = 0
    force: bool = False

    @classmethod
    def from_table(cls, user: str, table: Mapping[str, object]) -> Rule:
        unknown = set(table) - {"events", "targets", "max_targets", "force"}
        if unknown:
            raise ValueError(f"policy: users.{user}: unknown keys {', '.join(sorted(unknown))}")
        events = _strings(user, "events", table.get("events", []))
        kinds = _strings(user, "targets", table.get("targets", []))
        if set(kinds) - set(TARGET_KINDS):
            raise ValueError(f"policy: users.{user}.targets: each one of {', '.join(TARGET_KINDS)}")
        max_targets = table.get("max_targets", 0)
        force = table.get("force", False)
        if not isinstance(max_targets, int) or isinstance(max_targets, bool) or max_targets < 0:
            raise ValueError(f"policy: users.{user}.max_targets: a count >= 0")
        if not isinstance(force, bool):
            raise ValueError(f"policy: users.{user}.force: true or false")
        return cls(tuple(events), frozenset(kinds), max_targets, force)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: Mapping[str, Rule]
    source: str = "no policy"

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
        users = data.get("users", {})
        if set(data) - {"users"} or not isinstance(users, dict):
            raise ValueError(f"{source}: expected only [users.NAME] tables")
        return cls({u: Rule.from_table(u, t) for u, t in users.items()}, source)

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


def _strings(user: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"policy: users.{user}.{key}: a list of strings")
    return value


def _deny(detail: str) -> NoReturn:
    raise RequestRefused(RefusalReason.NOT_PERMITTED, detail)
