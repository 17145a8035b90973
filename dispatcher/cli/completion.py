"""``--print-completion bash|zsh|tcsh``: shell completion scripts written by shtab.

shtab reads the argparse parsers themselves, so completion never drifts from the
options; it is imported only when a script is asked for, so it costs nothing otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

SHELLS = ("bash", "zsh", "tcsh")


class PrintCompletion(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, choices=SHELLS, metavar="SHELL", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        import shtab

        print(shtab.complete(parser, shell=values), end="")
        parser.exit(0)


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-completion",
        action=PrintCompletion,
        default=argparse.SUPPRESS,
        help="print a completion script for SHELL (bash, zsh or tcsh) and exit",
    )
