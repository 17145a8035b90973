"""What the three command lines share: exit codes, global options, durations, one-line errors.

Nothing here touches the broker or a file: the entry points pass in what their own
errors mean (:func:`run`'s ``explain``), so the agent reuses this without the dispatcher.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from schemas.durations import parse_duration

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed (a client failed, a key file exists, ...)
EXIT_USAGE = 2  # bad arguments or configuration: nothing was done
EXIT_BROKER = 3  # the broker could not be reached, or refused
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EXIT_BROKEN_PIPE = 141  # output piped into `head`, as a shell reports SIGPIPE

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

Explain = Callable[[Exception], "tuple[str, int] | None"]


class CommandError(Exception):
    """A command that cannot go on: one line for the operator and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version(distribution: str = "setevnt") -> str:
    from importlib import metadata  # only for --version: the agent counts its memory

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


class _Version(argparse.Action):
    """argparse's own ``version`` action, but the installed version is looked up only
    when asked for: reading the package metadata costs every start a few milliseconds."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        print(f"{parser.prog} {version()}")
        parser.exit(0)


def log_level(text: str) -> str:
    return text.upper()


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def duration(text: str) -> float:
    """An argparse type: ``30``, ``30s``, ``5m``, ``1h30m`` -> seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_with_unit(text: str) -> float:
    """Like :func:`duration`, but a bare number is refused: where a slip costs data
    (``prune --older-than 30`` was 30 seconds), the unit must be written."""
    seconds = duration(text)
    if text.strip().replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} has no unit: write {text.strip()}s, {text.strip()}m, "
            f"{text.strip()}h or {text.strip()}d"
        )
    return seconds


def add_global_options(
    parser: argparse.ArgumentParser, *, log_default: str, url: bool = True
) -> None:
    """``--version``, ``--log-level`` and (optionally) ``--url`` on the top-level parser;
    :func:`share_globals` then accepts them after the subcommand too."""
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version")
    _global(parser, log_default, url)


def _global(
    parser: argparse.ArgumentParser, log_default: object, url: bool
) -> list[argparse.Action]:
    added = [
        parser.add_argument(
            "--log-level",
            type=log_level,
            choices=LOG_LEVELS,
            default=log_default,
            metavar="LEVEL",
            help="DEBUG, INFO, WARNING or ERROR (any case)"
            + ("" if log_default is argparse.SUPPRESS else f"; default {log_default}"),
        )
    ]
    if url:
        added.append(
            parser.add_argument(
                "--url",
                default=None if log_default is not argparse.SUPPRESS else argparse.SUPPRESS,
                help="AMQP URL (default: $SETEVNT_AMQP_URL or the local broker)",
            )
        )
    return added


def share_globals(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    """Accept the global options after every subcommand as well as before it.

    A subcommand's copy has no default (``SUPPRESS``), so it sets the value only when
    given there and never hides one given before the subcommand. A subcommand that
    already has its own ``--url`` keeps it, with its default suppressed likewise.
    """
    for sub in _subparsers(parser):
        own = {flag for action in sub._actions for flag in action.option_strings}
        for action in sub._actions:
            if "--url" in action.option_strings:
                action.default = argparse.SUPPRESS
        _global(sub, argparse.SUPPRESS, url and "--url" not in own)
        share_globals(sub, url=url)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(dict.fromkeys(action.choices.values()))
    return found


def walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser under it (for tests and completion)."""
    return [parser, *(p for sub in _subparsers(parser) for p in walk(sub))]


def confirm(question: str, *, yes: bool, refusal: str) -> None:
    """Go on only with ``--yes`` or a "y" typed at a terminal; without a terminal to ask
    on, stop with ``refusal`` (a usage error: nothing was done)."""
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise CommandError(f"{refusal}: add --yes to go ahead", EXIT_USAGE)
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed: nothing was done", EXIT_FAILED)


def run(prog: str, body: Callable[[], int], explain: Explain | None = None) -> int:
    """Run a command's body; whatever it raises that an operator caused or can fix ends
    as one line on stderr (``prog: error: ...``) and its exit code, never a traceback."""
    try:
        code = body()
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as exc:
        return fail(prog, str(exc), exc.code)
    except Exception as exc:
        known = (explain(exc) if explain else None) or _explain(exc)
        if known is None:
            raise
        return fail(prog, *known)


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _explain(exc: Exception) -> tuple[str, int] | None:
    if isinstance(exc, ValueError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}", EXIT_FAILED
    return None


def _broken_pipe() -> int:
    # Python flushes stdout again at exit and would print "Exception ignored ... Broken
    # pipe": point it at /dev/null, as the Python documentation advises for SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
