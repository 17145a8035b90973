"""Logging set-up shared by the command-line entry points."""

from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pika narrates socket events and logs every failed connection attempt with a
    # traceback; setevnt reports those failures itself, in one line. Debug shows all.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL
    logging.getLogger("pika").setLevel(quiet)
