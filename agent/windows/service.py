"""``setevnt-agent`` as a Windows service (pywin32's service framework; Windows only).

The service reads %ProgramData%\\setevnt\\agent.toml, logs to the Application event log
under ``setevnt-agent``, and maps the service control manager's stop onto the agent's
graceful stop (agent.windows.runner). ``setevnt-agent service install|remove|start|stop``
calls the functions below.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

import pywintypes
import servicemanager
import win32service
import win32serviceutil

from agent.assembly import build_agent
from agent.config import PLATFORM_DEFAULTS, default_path, load
from agent.daemon import Agent
from agent.windows.runner import ServiceRunner

NAME = "setevnt-agent"
DISPLAY_NAME = "setevnt agent"
DESCRIPTION = "Runs client component events (Set Client Event) sent through RabbitMQ."
Error = pywintypes.error  # what the service manager's calls raise
STOP_WAIT_MS = 30_000  # a hint to the service manager: the command in hand finishes first


def configured_agent() -> Agent:
    """The agent %ProgramData%\\setevnt\\agent.toml describes (as `setevnt-agent run`)."""
    return build_agent(load(default_path(None)))


class AgentService(win32serviceutil.ServiceFramework):
    _svc_name_ = NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = DESCRIPTION

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)
        self.runner = ServiceRunner(configured_agent)

    def SvcStop(self) -> None:
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_MS)
        self.runner.stop()

    def SvcDoRun(self) -> None:
        logging.basicConfig(
            level=logging.INFO,
            format="%(name)s: %(message)s",
            handlers=[logging.handlers.NTEventLogHandler(NAME)],
        )
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        servicemanager.LogInfoMsg(f"{NAME} starting ({PLATFORM_DEFAULTS.config})")
        status = self.runner.run()
        if status:
            servicemanager.LogErrorMsg(f"{NAME} stopped with status {status}; see above")


def install() -> None:
    # By file path, not module name: pythonservice.exe does not start with the venv's path.
    win32serviceutil.InstallService(
        win32serviceutil.GetServiceClassString(AgentService),
        NAME,
        DISPLAY_NAME,
        startType=win32service.SERVICE_AUTO_START,
        description=DESCRIPTION,
    )


def remove() -> None:
    win32serviceutil.RemoveService(NAME)


def start() -> None:
    win32serviceutil.StartService(NAME)


def stop() -> None:
    win32serviceutil.StopService(NAME)


ACTIONS = {"install": install, "remove": remove, "start": start, "stop": stop}


def dispatch_from_service_manager() -> None:
    """What pythonservice.exe runs when the service manager starts the service."""
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(AgentService)
    servicemanager.StartServiceCtrlDispatcher()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    if len(sys.argv) == 1:
        dispatch_from_service_manager()
    else:
        win32serviceutil.HandleCommandLine(AgentService)
