"""Every flag, positional and subcommand of the three command lines says what it is for."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from agent.cli import build_parser as agent_parser
from dispatcher.cli.main import build_parser as dispatcher_parser
from dispatcher.cli.setevnt import build_parser as setevnt_parser
from schemas import cli

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "setevnt": setevnt_parser,
    "setevnt-dispatcher": dispatcher_parser,
    "setevnt-agent": agent_parser,
}


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for each in cli.walk(parser):
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{each.prog} {choice.dest}"
                    for choice in action._get_subactions()
                    if not choice.help
                ]
            elif not action.help:
                missing.append(f"{each.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("name", PARSERS)
def test_every_action_has_help(name: str) -> None:
    assert undocumented(PARSERS[name]()) == []


@pytest.mark.parametrize("name", PARSERS)
def test_global_options_go_before_or_after_the_subcommand(name: str) -> None:
    parser = PARSERS[name]()
    command = {"setevnt": [], "setevnt-dispatcher": ["declare"], "setevnt-agent": ["check"]}[name]
    url = "amqp://u:p@host:5672/%2F"
    before = parser.parse_args(["--url", url, "--log-level", "debug", *command])
    after = parser.parse_args([*command, "--url", url, "--log-level", "debug"])
    neither = parser.parse_args(command)
    assert (before.url, before.log_level) == (after.url, after.log_level) == (url, "DEBUG")
    assert neither.url is None and neither.log_level in cli.LOG_LEVELS


def test_a_subcommands_own_url_is_not_hidden_by_its_default() -> None:
    parser = agent_parser()
    url = "amqp://u:p@host:5672/%2F"
    assert parser.parse_args(["--url", url, "run"]).url == url
    assert parser.parse_args(["run", "--url", url]).url == url
    assert parser.parse_args(["run"]).url is None
