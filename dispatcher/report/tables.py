"""Plain-text tables for the operator's terminal, safe for text that agents wrote.

An agent's detail or output may hold anything: line breaks, terminal escape sequences,
right-to-left overrides. On a terminal each would break a row or rewrite the screen, so
every cell is cut to one line of printable characters before it is laid out.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

_SPACES = frozenset("\t\r\n\v\f")


def one_line(value: object, limit: int) -> str:
    """``value`` as one printable line of at most ``limit`` characters ("-" for nothing)."""
    if value is None or value == "":
        return "-"
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text[: limit * 4]  # enough to fill the limit after collapsing, bounded
    shown = "".join(c if c.isprintable() else " " if c in _SPACES else "?" for c in text)
    shown = " ".join(shown.split())
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def tail_line(value: object, limit: int) -> str:
    """The end of ``value`` (a command's output) as one printable line."""
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else str(value)
    shown = one_line(text[-limit * 4 :], limit * 4)
    return shown if len(shown) <= limit else "..." + shown[-(limit - 3) :]


def layout(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int | None) -> list[str]:
    """Columns as wide as their widest cell; the last one runs on, cut at ``width``."""
    body = [list(row) for row in rows]
    sizes = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers[:-1])]
    lines = []
    for row in [list(headers), *body]:
        cells = [cell.ljust(size) for cell, size in zip(row, sizes, strict=False)]
        line = "  ".join([*cells, row[-1]]).rstrip()
        if width is not None and len(line) > width:
            line = line[: max(width - 3, 0)] + "..."
        lines.append(line)
    return lines


def terminal_width(stream: TextIO) -> int | None:
    """The terminal's width when ``stream`` is one (a pipe or file gets whole lines)."""
    if not stream.isatty():
        return None
    return shutil.get_terminal_size().columns


def write(lines: Iterable[str], stream: TextIO | None = None) -> None:
    """Print lines in what the stream can encode (an agent's text may not fit its charset)."""
    out = sys.stdout if stream is None else stream
    encoding = getattr(out, "encoding", None) or "utf-8"
    for line in lines:
        out.write(line.encode(encoding, "replace").decode(encoding) + "\n")
