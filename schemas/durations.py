"""Durations as operators, policies and configs write them: ``90``, ``5m``, ``1h30m``."""

from __future__ import annotations

import math
import re

_BARE_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)\s*")
_UNIT_ORDER = ("d", "h", "m", "s", "ms")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``250ms``, ``5m``, ``2h``, ``1d``, ``1h30m`` -> seconds."""
    bare = _BARE_NUMBER.fullmatch(text)
    seconds = float(bare.group(1)) if bare else _compound_duration(text.rstrip())
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"{text[:40]!r} is not a duration (e.g. 30s, 5m, 1h30m)")
    return seconds


def _compound_duration(text: str) -> float | None:
    """Parts of a number and a unit, each unit once and the largest first (``1d2h30m``)."""
    total, at, last = 0.0, 0, -1
    while at < len(text):
        part = _DURATION_PART.match(text, at)
        if part is None:
            return None
        rank = _UNIT_ORDER.index(part.group(2))
        if rank <= last:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        at, last = part.end(), rank
    return total if last >= 0 else None


def format_duration(seconds: float) -> str:
    """Seconds as :func:`parse_duration` reads them back: 5400 -> ``1h30m``."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts: list[str] = []
    rest = seconds
    for unit in ("d", "h", "m"):
        count = int(rest // _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * _UNITS[unit]
    if round(rest, 3) or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)
