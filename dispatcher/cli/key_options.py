"""``--key`` and ``--unsigned``: how every command that publishes commands signs them."""

from __future__ import annotations

import argparse

from dispatcher.access.keys import KEY_FILE_ENV, Signing, choose


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key`` and ``--unsigned``, for every command that publishes commands."""
    parser.add_argument(
        "--key",
        metavar="PATH",
        help=f"the signing key `keygen` wrote (default: ${KEY_FILE_ENV}; required)",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="send commands unsigned (only agents with allow_unsigned = true run them)",
    )


def from_arguments(args: argparse.Namespace) -> Signing:
    return choose(args.key, args.unsigned)
