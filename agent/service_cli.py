"""``setevnt-agent service install|remove|start|stop``: the agent as a Windows service.

Windows only (agent.windows.service, pywin32). Elsewhere it says so, exits 2 and points
to the systemd unit, which does the same job there.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

ACTIONS = ("install", "remove", "start", "stop")
SYSTEMD_HINT = (
    "setevnt-agent service: the service is Windows-only; on this system use the systemd "
    "unit deploy/systemd/setevnt-agent.service (systemctl enable --now setevnt-agent)"
)


def add_command(sub: Any) -> None:
    service = sub.add_parser("service", help="install, remove, start or stop the Windows service")
    service.add_argument("action", choices=ACTIONS, help="what to do with the service")


def main(args: argparse.Namespace) -> int:
    if os.name != "nt":
        print(SYSTEMD_HINT, file=sys.stderr)
        return 2
    from agent.windows import service  # pywin32: importable on Windows only

    try:
        service.ACTIONS[args.action]()
    except service.Error as exc:
        why = getattr(exc, "strerror", None) or exc
        print(f"setevnt-agent service {args.action}: {why}", file=sys.stderr)
        return 1
    print(f"setevnt-agent service {args.action}: done")
    return 0
