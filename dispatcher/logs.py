"""Logging set-up shared by the command-line entry points."""

from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pika narrates every socket event at INFO; its warnings are what matter here.
    logging.getLogger("pika").setLevel(logging.WARNING)
