"""``setevnt``: fire component events at clients, like SetEvnt.exe but for a fleet.

setevnt [--url URL] (--client ID ... | --group G ... | --all | --clients-file FILE)
        [/q] [cq | COMPONENT_EVENT] [--wait DURATION] [--json] [--db PATH]
        [--dry-run] [--yes] [--max-targets N]

More than --max-targets clients (100) is a storm's job: `setevnt-dispatcher storm` paces,
records and resumes. ``--all``, or more than --confirm-above clients, asks first.

Groups and --all are resolved through the fleet registry in the dispatcher's database.
Sent commands reach the ledger through the service's collector (from any host), so
`setevnt-dispatcher status COMMAND_ID` finds them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from dispatcher.api.dispatcher import DEFAULT_TTL, Dispatcher, OutcomesUnrecorded, Receipt
from dispatcher.api.waiter import AckWaiter, Answer
from dispatcher.cli import completion, key_options, targets
from dispatcher.cli.logs import broker_errors, configure
from dispatcher.report import results, tables
from dispatcher.store.db import DbSettings
from schemas import Command, cli
from schemas.cli import EXIT_BROKER, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from schemas.syntax import Invocation, parse_invocation

PROG = "setevnt"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(
        prog=PROG,
        description="Trigger client component events through RabbitMQ. With no event, "
        "cycles CCIM32 and Copy Queue; 'cq' cycles Copy Queue only; '/q' is silent.",
        epilog="COMPONENT_EVENT is case-sensitive, e.g. CCIM32_STARTCYCLE or CLISVCL_CLOSE.",
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="[/q] [cq | COMPONENT_EVENT]",
        help="'/q' silent; 'cq' Copy Queue only; else one COMPONENT_EVENT (default: both cycles)",
    )
    cli.add_global_options(parser, log_default="ERROR")  # failures are reported in one line
    completion.add_option(parser)
    targets.add_arguments(parser)
    parser.add_argument(
        "--db",
        help="dispatcher database: a SQLite file or a postgresql:// URL "
        "(default: $SETEVNT_DB, ./setevnt.db)",
    )
    parser.add_argument(
        "--wait", type=cli.duration, metavar="DURATION", help="wait this long for the acks (30s)"
    )
    parser.add_argument(
        "--ttl",
        type=cli.duration,
        default=DEFAULT_TTL,
        metavar="DURATION",
        help=f"until a command expires unread (default {DEFAULT_TTL:g}s)",
    )
    parser.add_argument("--force", action="store_true", help="ask to bypass the agent guard")
    key_options.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    targets.add_safety_options(parser, publishes="publish nothing")
    parser.add_argument(
        "--max-targets",
        type=targets.count,
        default=100,
        metavar="N",
        help="refuse more clients than this: storms pace them (default 100)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    configure(args.log_level)
    return cli.run(PROG, lambda: trigger(args), explain=broker_errors(args.url))


def trigger(args: argparse.Namespace) -> int:
    invocation = parse_invocation(args.words)
    clients = targets.from_command_line(args, DbSettings.from_env(args.db))
    if args.dry_run:
        return targets.dry_run(invocation.events, clients, args.json)
    signing = key_options.from_arguments(args)  # before anything is sent
    _check_size(args, invocation, clients)
    with Dispatcher(args.url, name="setevnt-cli", signing=signing) as dispatcher:
        commands = dispatcher.commands(
            clients,
            invocation.events,
            silent=invocation.silent,
            ttl=args.ttl,
            force=args.force,
        )
        if args.wait is None:
            receipts, unrecorded = _send(dispatcher, commands)
            return _unrecorded(unrecorded, _report(receipts, {}, args.json, waited=False))
        with AckWaiter(dispatcher.settings, clients) as waiter:
            receipts, unrecorded = _send(dispatcher, commands)
            sent = [r for r in receipts if r.sent]
            answers = waiter.wait(
                {r.command_id: r.client_id for r in sent},
                args.wait,
                issued_at={r.command_id: r.issued_at for r in sent},
            )
            answers = {**waiter.latest, **answers}
        return _unrecorded(unrecorded, _report(receipts, answers, args.json, waited=True))


def _send(
    dispatcher: Dispatcher, commands: list[Command]
) -> tuple[list[Receipt], OutcomesUnrecorded | None]:
    """The receipts, also when the commands went out but their outcomes went unrecorded."""
    try:
        return dispatcher.send(commands), None
    except OutcomesUnrecorded as exc:
        return exc.receipts, exc


def _unrecorded(exc: OutcomesUnrecorded | None, code: int) -> int:
    if exc is None:
        return code
    print(
        f"{PROG}: {exc}\n{PROG}: do not send these commands again: those above that went "
        "out are on their way, and the ledger shows them planned until their acks come; a "
        "waiting-node one is not sent again by the service",
        file=sys.stderr,
    )
    return EXIT_BROKER


def _check_size(args: argparse.Namespace, invocation: Invocation, clients: list[str]) -> None:
    names = " and ".join(event.name for event in invocation.events)
    if len(clients) > args.max_targets:
        raise cli.CommandError(
            f"{len(clients)} clients is more than --max-targets {args.max_targets}: use "
            f"`setevnt-dispatcher storm {invocation.events[0].name} ...` for a fleet (paced, "
            "recorded, resumable; one event per storm), or raise --max-targets",
            EXIT_USAGE,
        )
    targets.confirm(args, f"{names} to {len(clients)} client(s)", len(clients))


def _report(
    receipts: list[Receipt], answers: dict[str, Answer], as_json: bool, waited: bool
) -> int:
    failed = False
    rows = []
    for receipt in receipts:
        row = _row(receipt, answers.get(receipt.command_id), waited)
        # A command waiting for its queue's node is not failed: the service sends it.
        failed = failed or row["status"] not in ("done", "sent", "waiting-node")
        rows.append(row)
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        _print_table(rows)
        _say_waiting(rows)
    return EXIT_FAILED if failed else EXIT_OK


def _say_waiting(rows: list[dict[str, object]]) -> None:
    waiting = sum(1 for row in rows if row["status"] == "waiting-node")
    if waiting:
        print(
            f"{waiting} command(s) wait for the broker node of their client's queue: the "
            "dispatcher service sends them when it is back (within their TTL)",
            file=sys.stderr,
        )


def _row(receipt: Receipt, answer: Answer | None, waited: bool) -> dict[str, object]:
    row: dict[str, object] = {
        "client": receipt.client_id,
        "event": f"{receipt.component}_{receipt.event}",
        "command_id": receipt.command_id,
        "status": receipt.status,
        "latency_s": None,
        "detail": "" if receipt.sent else receipt.explanation,
        "reason": None,
        "exit_code": None,
        "exit_code_hex": None,
    }
    if receipt.sent and waited:
        if answer is None:
            row["status"], row["detail"] = "timeout", "no ack before --wait ran out"
        else:
            ack = answer.ack
            interim = "" if ack.final else " (still waiting when --wait ran out)"
            row["status"] = ack.status if ack.final else "timeout"
            row["latency_s"] = round(answer.latency, 4) if answer.latency is not None else None
            row["detail"] = " ".join(p for p in (ack.reason, ack.detail) if p) + interim
            row["reason"], row["exit_code"] = ack.reason, ack.exit_code
            row["exit_code_hex"] = results.ntstatus_hex(ack.exit_code)
    return row


def _print_table(rows: list[dict[str, object]]) -> None:
    """One line per command, then how many ended how ("3 done, 1 failed of 4")."""
    headers = ("CLIENT", "EVENT", "COMMAND", "STATUS", "LATENCY", "DETAIL")
    cells = [
        (
            str(row["client"]),
            str(row["event"]),
            str(row["command_id"]),
            str(row["status"]),
            _latency(row["latency_s"]),
            tables.one_line(_detail(row), 200),
        )
        for row in rows
    ]
    lines = tables.layout(headers, cells, tables.terminal_width(sys.stdout))
    tables.write([*lines, results.summary(Counter(str(row["status"]) for row in rows))])


def _latency(latency: object) -> str:
    return f"{latency * 1000:.1f} ms" if isinstance(latency, float) else "-"


def _detail(row: dict[str, object]) -> str:
    code = row["exit_code"]
    exit_code = f" (exit code {results.exit_code_text(code)})" if isinstance(code, int) else ""
    return f"{row['detail']}{exit_code}"


if __name__ == "__main__":
    sys.exit(main())
