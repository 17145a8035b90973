"""Bad values on the operator's command line are refused with the parser's own reason."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from dispatcher.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["storm", "CCIM32_STARTCYCLE", "--all", "--rate", "fast"], "'fast' is not a rate"),
        (["storm", "CCIM32_STARTCYCLE", "--all", "--ttl", "1y"], "'1y' is not a duration"),
        (["storm", "CCIM32_STARTCYCLE", "--all", "--max-errors", "lots"], "not a count or a"),
        (["storm", "CCIM32_STARTCYCLE", "--all", "--max-in-flight", "150%"], "<= 100%"),
        (["clients", "--offline-after", "soon"], "'soon' is not a duration"),
        (["prune", "--older-than", "a month"], "'a month' is not a duration"),
    ],
)
def test_a_bad_value_says_why(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert reason in error and "invalid" not in error


def test_prune_needs_an_age(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune"])
    assert "--older-than" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["storm", "CCIM32_STARTCYCLE"], "no targets"),
        (["storm", "CCIM32_STARTCYCLE", "--all"], "no setevnt database"),
        (["storm", "CCIM32_STARTCYCLE", "--group", "LAB"], "no setevnt database"),
        (["resume", "20261121-abc"], "no setevnt database"),
    ],
)
def test_a_mistyped_database_or_no_targets_creates_no_database(
    argv: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is planned, so nothing may leave a new, empty database behind."""
    missing = tmp_path / "typo.db"
    assert main([*argv, "--db", str(missing)]) == 2
    assert reason in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_storm_that_never_reached_the_broker_fails_and_can_be_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "setevnt.db")
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F"
    argv = ["--url", url, "storm", "CCIM32_STARTCYCLE", "--client", "PC1", "--db", db]
    assert main(argv) == 3
    started = re.search(r"storm (storm-\S+):", capsys.readouterr().err)
    assert started is not None
    assert main(["status", started.group(1), "--json", "--db", db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "failed", "not interrupted for ever"
    assert shown["reason"].startswith("broker: connecting to ")
    assert (shown["published"], shown["unsent"]) == (0, 1), "resume can still send it"
    assert main(["prune", "--older-than", "0s", "--db", db, "--yes"]) == 0
    assert capsys.readouterr().out.startswith("forgot 1 storm(s) and 1 command(s) ")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["results", "storm-x", "--status", "failed,nope"], "'nope' is not a status"),
        (["results", "storm-x", "--status", ","], "give at least one status"),
        (["storm", "--retry-from", "storm-x", "--status", "done,later"], "'later' is not a"),
        (["dead", "--limit", "0"], "'0': a count from 1 to 10000"),
        (["dead", "--limit", "lots"], "'lots': a count from 1 to 10000"),
    ],
)
def test_a_bad_status_or_limit_says_why(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["storm", "--all"], "give the COMPONENT_EVENT to send"),
        (["storm", "CCIM32_STARTCYCLE", "--all", "--status", "failed"], "--status goes with"),
        (["storm", "--retry-from", "storm-x"], "no setevnt database"),
        (["results", "storm-x"], "no setevnt database"),
    ],
)
def test_a_storm_or_results_without_what_they_need_say_so(
    argv: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--db", str(tmp_path / "typo.db")]) == 2
    assert reason in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
