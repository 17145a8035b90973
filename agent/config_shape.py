"""The agent config file's shape: every table and key it may hold, and each value's type.

A typo must not start an agent that quietly ignores a setting (``journel`` would run
commands twice after a restart), so a key this module does not know is an error, with
the closest known key as a suggestion. Every error names the key path
(``backend.exec.timeout``) and is one line. Durations are numbers of seconds or what
:func:`schemas.durations.parse_duration` reads (``30s``, ``5m``, ``1h30m``); the checked
data comes back with each duration as a float, so the rest of the agent reads plain
values. Event names (``[backend.exec.commands]`` keys, ...) are checked against the
catalog, which ``[[components]]`` extends, so the catalog is built from the file first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Union

from schemas.catalog import DEFAULT_CATALOG, PLATFORMS, Catalog
from schemas.durations import parse_duration


class ShapeError(ValueError):
    """A key or value of the file is wrong; the message starts with its key path."""


@dataclass(frozen=True)
class Context:
    """What a value is checked against besides its own type: the file's catalog."""

    events: Collection[str]
    components: Collection[str]


Check = Callable[[str, Any, Context], Any]
Shape = Mapping[str, Union["Shape", Check]]

BACKEND_NAMES = ("exec", "posix-signal", "file", "win32-event", "simulated")
BACKEND_ALIASES = {"signal": "posix-signal"}


def kind(value: object) -> str:
    """A TOML value's type as an operator reads it: 'a string', 'a table', ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def suggestion(word: str, known: Collection[str], template: str = "{}") -> str:
    """'; did you mean X?' for the closest known word, else the known words."""
    import difflib  # only on the error path: the agent's idle footprint is budgeted

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {template.format(close[0])}?"
    if len(known) <= 12:
        return f" (known: {', '.join(template.format(k) for k in sorted(known))})"
    return ""


# -- value checks --------------------------------------------------------------------------


def string(path: str, value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        raise ShapeError(f"{path}: must be a string, not {kind(value)}")
    return value


def boolean(path: str, value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ShapeError(f"{path}: must be true or false, not {kind(value)}")
    return value


def integer(path: str, value: Any, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"{path}: must be an integer, not {kind(value)}")
    return value


def number(path: str, value: Any, ctx: Context) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"{path}: must be a number, not {kind(value)}")
    if not math.isfinite(value):
        raise ShapeError(f"{path}: must be a finite number")
    return float(value)


def array(item: Check) -> Check:
    def check(path: str, value: Any, ctx: Context) -> list[Any]:
        if not isinstance(value, list):
            raise ShapeError(f"{path}: must be an array, not {kind(value)}")
        return [item(f"{path}[{i}]", v, ctx) for i, v in enumerate(value)]

    return check


strings = array(string)


def duration(*, zero: bool = False) -> Check:
    """Seconds as a number or a text such as ``30s``; positive (or zero) and finite."""
    rule = "a finite duration, not negative" if zero else "a positive, finite duration"

    def check(path: str, value: Any, ctx: Context) -> float:
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ShapeError(f"{path}: {exc}") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise ShapeError(f"{path}: must be a duration (e.g. 30s, 5m, 1h30m), not {kind(value)}")
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
            raise ShapeError(f"{path}: must be {rule}")
        return seconds

    return check


def choice(options: Collection[str], what: str) -> Check:
    def check(path: str, value: Any, ctx: Context) -> str:
        name = string(path, value, ctx)
        if name not in options:
            raise ShapeError(f"{path}: unknown {what} {name!r}{suggestion(name, options)}")
        return name

    return check


def port(path: str, value: Any, ctx: Context) -> int:
    number = integer(path, value, ctx)
    if not 0 <= number <= 65535:
        raise ShapeError(f"{path}: must be a TCP port from 0 to 65535 (0 picks a free one)")
    return number


def argv(path: str, value: Any, ctx: Context) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(a, str) and a for a in value):
        return list(value)
    raise ShapeError(f'{path}: must be a non-empty array of strings, e.g. ["/path/program", "arg"]')


def free_table(item: Check) -> Check:
    """A table whose keys the site chooses (``[versions]``)."""

    def check(path: str, value: Any, ctx: Context) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ShapeError(f"{path}: must be a table, not {kind(value)}")
        return {k: item(f"{path}.{k}", v, ctx) for k, v in value.items()}

    return check


def events(item: Check, *, components: bool = False) -> Check:
    """A table keyed by COMPONENT_EVENT (or, with ``components``, also by COMPONENT)."""

    def check(path: str, value: Any, ctx: Context) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ShapeError(f"{path}: must be a table, not {kind(value)}")
        known = set(ctx.events) | (set(ctx.components) if components else set())
        for key in value:
            if key not in known:
                what = "event or component" if components else "event"
                hint = suggestion(key, ctx.events if "_" in key else known)
                if not hint.startswith(";"):
                    hint = " (not in the catalog; a site's own component goes in [[components]])"
                raise ShapeError(f"{path}.{key}: unknown {what}{hint}")
        return {k: item(f"{path}.{k}", v, ctx) for k, v in value.items()}

    return check


def table(shape: Shape) -> Check:
    def check(path: str, value: Any, ctx: Context) -> dict[str, Any]:
        return _table(path, value, shape, ctx)

    return check


# -- the file ------------------------------------------------------------------------------

DURATION = duration()

BACKEND_SHAPES: dict[str, Shape] = {
    "exec": {"timeout": DURATION, "env": strings, "commands": events(argv)},
    "posix-signal": {
        "events": events(table({"pidfile": string, "signal": string})),
    },
    "file": {"directory": string, "fifo": string},
    "win32-event": {"prefix": string, "names": events(string)},
    "simulated": {
        "duration": duration(zero=True),
        "durations": events(duration(zero=True), components=True),
        "failure_rate": number,
        "record": string,
        "seed": integer,
    },
}


def backend_name(path: str, value: Any, ctx: Context) -> str:
    name = string(path, value, ctx)
    name = BACKEND_ALIASES.get(name, name)
    if name not in BACKEND_NAMES:
        raise ShapeError(f"{path}: unknown backend {name!r}{suggestion(name, BACKEND_NAMES)}")
    return name


SHAPE: Shape = {
    "client_id": string,
    "platform": choice(PLATFORMS, "platform"),
    "groups": strings,
    "copylist_version": string,
    "copylist_version_file": string,
    "broker": {
        "url": string,
        "heartbeat": duration(zero=True),
        "ca_file": string,
        "cert_file": string,
        "key_file": string,
    },
    "security": {
        "dispatcher_public_key": string,
        "dispatcher_public_keys": strings,
        "allow_unsigned": boolean,
        "max_clock_skew": DURATION,
    },
    "agent": {
        "journal": string,
        "hello_interval": DURATION,
        "stall_timeout": DURATION,
        "max_command_lifetime": DURATION,
        "allow_force": boolean,
    },
    "guard": {
        "probes": array(choice(("lock", "process", "marker", "command"), "probe")),
        "lock": string,
        "processes": strings,
        "markers": strings,
        "command": strings,
        "busy_exit_codes": array(integer),
        "command_timeout": DURATION,
        "poll_interval": DURATION,
        "max_deferral": DURATION,
        "disruptive": strings,
        "spool": string,
    },
    "versions": free_table(string),
    "backend": {
        "type": backend_name,
        **BACKEND_SHAPES,
        **{alias: BACKEND_SHAPES[name] for alias, name in BACKEND_ALIASES.items()},
    },
    "components": array(
        table({"name": string, "title": string, "platforms": strings, "events": strings})
    ),
    "metrics": {"port": port, "addr": string},
}


def check(data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's data, every key known and every value of its type (durations as floats).

    Raises ShapeError naming the first key that is wrong.
    """
    catalog = site_catalog(data)
    ctx = Context(events=catalog.event_names(), components=[c.name for c in catalog])
    return _table("", data, SHAPE, ctx)


def site_catalog(data: Mapping[str, Any]) -> Catalog:
    """The built-in catalog with the file's ``[[components]]`` added."""
    entries = data.get("components", [])
    if not isinstance(entries, list):
        raise ShapeError(
            f"components: must be an array of tables ([[components]]), not {kind(entries)}"
        )
    built = []
    for index, entry in enumerate(entries):
        path = f"components[{index}]"
        if not isinstance(entry, dict):
            raise ShapeError(f"{path}: must be a table, not {kind(entry)}")
        if "name" not in entry:
            raise ShapeError(f"{path}.name: is required (an upper case name, e.g. CLISETUP)")
        try:
            built += Catalog.components_from_config([entry])
        except ValueError as exc:
            raise ShapeError(f"{path}: {exc}") from None
    try:
        return DEFAULT_CATALOG.extended(built)
    except ValueError as exc:
        raise ShapeError(f"components: {exc}") from None


def _table(path: str, value: Any, shape: Shape, ctx: Context) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShapeError(f"{path}: must be a table, not {kind(value)}")
    checked: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        rule = shape.get(key)
        if rule is None:
            raise ShapeError(_unknown(path, key, item, shape))
        if isinstance(rule, Mapping):
            checked[key] = _table(where, item, rule, ctx)
        else:
            checked[key] = rule(where, item, ctx)
    return checked


def _unknown(path: str, key: str, value: Any, shape: Shape) -> str:
    where = f"{path}.{key}" if path else key
    if isinstance(value, dict):
        prefix = f"{path}." if path else ""
        return f"[{where}]: unknown table{suggestion(key, list(shape), f'[{prefix}{{}}]')}"
    return f"{where}: unknown key{suggestion(key, list(shape))}"
