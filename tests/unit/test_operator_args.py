"""Bad values on the operator's command line are refused with the parser's own reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.main import build_parser, main


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
