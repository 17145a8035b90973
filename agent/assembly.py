"""An agent built from its configuration: what `run` and the Windows service both start."""

from __future__ import annotations

from agent import preflight
from agent.backends import make_backend
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.deferral import Deferrals
from agent.handler import Handler
from agent.journal import Journal


def build_handler(config: AgentConfig) -> Handler:
    """What `run` needs before it connects; raises what main reports in one line."""
    preflight.require(config)
    assert config.backend is not None and config.journal is not None
    backend = make_backend(config.backend, config.backend_options)
    journal = Journal(config.journal, max_lifetime=config.max_command_lifetime)
    deferrals = Deferrals.from_config(config, journal)
    return Handler(config, backend, journal, deferrals=deferrals)


def build_agent(config: AgentConfig) -> Agent:
    return Agent(config, build_handler(config))
