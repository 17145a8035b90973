"""`setevnt-dispatcher results` on a hand-built ledger, and the text it prints safely."""

from __future__ import annotations

import io
import json
import time

import pytest

from dispatcher.cli.main import main
from dispatcher.cli.results import status_filter
from dispatcher.report import results, tables
from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from schemas.messages import Ack, Issued

NOW = time.time()  # at collection: a long suite may reach the unit tests much later
LATER = NOW + 86_400  # in time, however late this test runs
STORM = "storm-20240101-000000-abcdef"


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (-1073741819, "0xC0000005"),  # STATUS_ACCESS_VIOLATION, as a signed int32
        (3221225477, "0xC0000005"),  # the same, as Windows' Python reports it
        (-2147483645, "0x80000003"),  # STATUS_BREAKPOINT
        (-1073741510, "0xC000013A"),  # STATUS_CONTROL_C_EXIT
        (-11, None),  # a POSIX process killed by SIGSEGV
        (-65535, None),
        (0, None),
        (7, None),
        (2**40, None),
        (None, None),
    ],
)
def test_exit_codes_that_look_like_ntstatus_are_also_shown_in_hex(
    code: int | None, shown: str | None
) -> None:
    assert results.ntstatus_hex(code) == shown
    if shown is not None:
        assert results.exit_code_text(code) == f"{code} ({shown})"


def test_a_status_filter_names_statuses_and_pending() -> None:
    assert status_filter("failed, expired") == {"failed", "expired"}
    assert status_filter("pending,done") == {"sent", "pending-offline", "waiting-node", "done"}


def test_agents_text_becomes_one_printable_line() -> None:
    text = "ok\r\n\x1b[2J\x1b]0;title\x07\u202eexe.bat\x00\tend"
    shown = tables.one_line(text, 200)
    assert shown == "ok ?[2J?]0;title??exe.bat? end"
    assert tables.one_line("x" * 50, 10) == "xxxxxxx..."
    assert tables.tail_line("first\nsecond\nERROR at the end", 12) == "...t the end"
    assert tables.one_line(b"\xff\xfebytes", 20) == "\ufffd\ufffdbytes"
    assert tables.one_line(None, 5) == "-" and tables.one_line("", 5) == "-"


def test_text_a_terminal_cannot_encode_is_replaced_not_fatal() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="latin-1")
    tables.write(["caf\u00e9 \u6f22\u5b57 \u2603"], stream)
    stream.flush()
    assert raw.getvalue() == "caf\u00e9 ?? ?\n".encode("latin-1")


@pytest.fixture
def database(store_db: DbSettings) -> DbSettings:
    """A storm over four clients: one failed with a crash, one done, one still pending
    whose command has expired, one still pending in time."""
    settings = store_db
    storm = StormRecord(
        STORM, "CCIM32", "STARTCYCLE", {}, 4, "done", None, "ops", NOW - 60, NOW - 50,
        NOW - 50, "pid 1", False,
    )  # fmt: skip
    commands = [
        CommandRecord(f"c{n}", STORM, client, "CCIM32", "STARTCYCLE", status, expires_at=expires)
        for n, (client, status, expires) in enumerate(
            [
                ("CRASHED", "sent", LATER),
                ("FINE", "sent", LATER),
                ("LAPSED", "pending-offline", NOW - 1),
                ("WAITING", "sent", LATER),
            ]
        )
    ]
    crash = Ack(
        "c0", "CRASHED", "failed", NOW - 55, "1.0", reason="signal-failed",
        detail="ccim32 crashed\n\x1b[31mred", exit_code=-1073741819, output="a\nb\nlast line",
    )  # fmt: skip
    fine = Ack("c1", "FINE", "done", NOW - 55, "1.0", exit_code=0)
    with Ledger(settings) as ledger:
        ledger.create_storm(storm, commands)
        ledger.record_answers([(crash, NOW - 55), (fine, NOW - 55)])
    return settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_results_list_every_client_with_why(
    database: DbSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        json.loads(line)
        for line in run(capsys, "results", STORM, "--json", "--db", database.path).splitlines()
    ]
    assert [(r["client"], r["status"]) for r in rows] == [
        ("CRASHED", "failed"),
        ("FINE", "done"),
        ("LAPSED", "expired"),
        ("WAITING", "sent"),
    ]
    crashed = rows[0]
    assert crashed["exit_code_hex"] == "0xC0000005" and crashed["output"] == "a\nb\nlast line"
    assert crashed["detail"] == "ccim32 crashed\n\x1b[31mred", "JSON carries it whole"
    assert rows[2]["recorded_status"] == "pending-offline"

    table = run(capsys, "results", STORM, "--db", database.path).splitlines()
    assert table[1].split()[:4] == ["CRASHED", "failed", "signal-failed", "-1073741819"]
    assert "(0xC0000005)" in table[1] and "ccim32 crashed ?[31mred | a b last line" in table[1]
    assert table[-1] == "1 done, 1 sent, 1 failed, 1 expired of 4"


def test_results_filter_by_what_became_of_each_command(
    database: DbSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    def clients(*statuses: str) -> list[str]:
        out = run(
            capsys,
            "results",
            STORM,
            "--json",
            "--status",
            ",".join(statuses),
            "--db",
            database.path,
        )
        return [json.loads(line)["client"] for line in out.splitlines()]

    assert clients("failed", "expired") == ["CRASHED", "LAPSED"]
    assert clients("pending") == ["WAITING"], "an expired command is no longer pending"
    assert clients("rejected") == []
    assert run(capsys, "results", STORM, "--status", "rejected", "--db", database.path) == (
        "no command matches\n"
    )
    one = run(capsys, "results", "c0", "--json", "--db", database.path)
    assert json.loads(one)["client"] == "CRASHED"


def test_a_storm_says_why_its_agents_rejected_it(store_db: DbSettings) -> None:
    settings = store_db
    storm = StormRecord(
        STORM, "CCIM32", "STARTCYCLE", {}, 4, "done", None, "ops", NOW - 60, NOW - 50,
        NOW - 50, "pid 1", False,
    )  # fmt: skip
    clients = ["A", "B", "C", "D"]
    commands = [
        CommandRecord(f"c{n}", STORM, c, "CCIM32", "STARTCYCLE", "sent", expires_at=LATER)
        for n, c in enumerate(clients)
    ]
    reasons = ["bad-signature", "bad-signature", "clock-skew", None]
    answers = [
        (Ack(f"c{n}", c, "rejected" if why else "done", NOW - 55, "1.0", reason=why), NOW - 55)
        for n, (c, why) in enumerate(zip(clients, reasons, strict=True))
    ]
    with Ledger(settings) as ledger:
        ledger.create_storm(storm, commands)
        assert results.rejections(ledger, STORM) is None
        ledger.record_answers(answers[:2])
        assert results.rejections(ledger, STORM) == (
            "2 client(s) rejected the command: bad-signature"
        )
        ledger.record_answers(answers[2:])
        assert results.rejections(ledger, STORM) == (
            "3 client(s) rejected the command: bad-signature (2), clock-skew (1)"
        )


def test_a_one_off_left_planned_counts_expired_once_its_time_ran_out(
    store_db: DbSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its process died before the broker's answer was recorded: nothing sends it again."""
    stuck = Issued("cli", "planned", "CCIM32", "STARTCYCLE", NOW - 120, NOW - 60, {"o1": "PC1"})
    alive = Issued("cli", "planned", "CCIM32", "STARTCYCLE", NOW, LATER, {"o2": "PC2"})
    storm = StormRecord(
        STORM, "CCIM32", "STARTCYCLE", {}, 1, "interrupted", None, "ops", NOW - 60, NOW - 50,
        NOW - 50, "pid 1", False,
    )  # fmt: skip
    resumable = CommandRecord("s1", STORM, "PC3", "CCIM32", "STARTCYCLE", "planned",
                              expires_at=NOW - 60)  # fmt: skip
    with Ledger(store_db) as ledger:
        ledger.record_issued([(stuck, NOW), (alive, NOW)])
        ledger.create_storm(storm, [resumable])

    def result(ident: str) -> dict[str, object]:
        out = run(capsys, "results", ident, "--json", "--db", store_db.path).splitlines()
        return dict(json.loads(out[0]))

    lapsed = result("o1")
    assert (lapsed["status"], lapsed["recorded_status"]) == ("expired", "planned")
    assert lapsed["detail"] == "no answer before it expired (the ledger has it planned)"
    assert result("o2")["status"] == "planned", "still in time: its process may yet send it"
    assert result(STORM)["status"] == "planned", "a storm's planned command waits for resume"
