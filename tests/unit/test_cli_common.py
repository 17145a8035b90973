"""The pieces the three command lines share (schemas.cli), without a process."""

from __future__ import annotations

import argparse
import io

import pytest

from schemas import cli


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0)]
)
def test_durations_read_as_operators_write_them(text: str, seconds: float) -> None:
    assert cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["30", " 7 ", "1.5"])
def test_a_duration_that_must_have_a_unit_refuses_a_bare_number(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="has no unit"):
        cli.duration_with_unit(text)
    assert cli.duration_with_unit(f"{text.strip()}d") == float(text) * 86400


@pytest.mark.parametrize("text", ["-1", "65536", "http", ""])
def test_a_port_is_0_to_65535(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a port"):
        cli.port(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_confirmation_takes_yes_or_asks_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    cli.confirm("go?", yes=True, refusal="unused")  # --yes: nothing is asked
    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    cli.confirm("go?", yes=False, refusal="unused")
    monkeypatch.setattr("sys.stdin", Terminal("\n"))
    with pytest.raises(cli.CommandError) as refused:
        cli.confirm("go?", yes=False, refusal="unused")
    assert refused.value.code == cli.EXIT_FAILED


def test_without_a_terminal_confirmation_needs_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(cli.CommandError, match="this sends 500: add --yes") as refused:
        cli.confirm("go?", yes=False, refusal="this sends 500")
    assert refused.value.code == cli.EXIT_USAGE


def test_errors_end_in_one_line_and_their_code(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(exc: BaseException) -> int:
        raise exc

    assert cli.run("p", lambda: failing(ValueError("bad value"))) == cli.EXIT_USAGE
    assert cli.run("p", lambda: failing(cli.CommandError("no", 1))) == cli.EXIT_FAILED
    assert cli.run("p", lambda: failing(KeyboardInterrupt())) == cli.EXIT_INTERRUPTED
    missing = FileNotFoundError(2, "No such file or directory", "x.toml")
    assert cli.run("p", lambda: failing(missing)) == cli.EXIT_FAILED
    assert capsys.readouterr().err.splitlines() == [
        "p: error: bad value",
        "p: error: no",
        "p: interrupted",
        "p: error: x.toml: No such file or directory",
    ]


def test_an_unknown_error_is_a_bug_and_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        cli.run("p", lambda: 1 // 0)
