"""The three command lines as an operator meets them: run as processes, with bad input.

Every bad input ends in one line on stderr and a documented exit code (2: usage or
configuration, 1: the command failed, 3: the broker), never a traceback; output piped
into ``head`` ends quietly; a broker that is down is named in one line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dispatcher.store.db import DbSettings
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from dispatcher.store.registry import StoreRegistry
from schemas.messages import Heartbeat

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "setevnt": "dispatcher.cli.setevnt",
    "setevnt-dispatcher": "dispatcher",
    "setevnt-agent": "agent",
}

# (command line, what its one line on stderr says, exit code). {db}: a database with a
# registered fleet of three; {missing}: no database; {ids}: a file of 150 client ids;
# {key}: a key file that exists.
BAD_INPUT: list[tuple[str, str, int]] = [
    ("setevnt --log-level LOUD --client PC1", "argument --log-level: invalid choice: 'LOUD'", 2),
    ("setevnt --client PC1 --wait 1h30x", "'1h30x' is not a duration (e.g. 30s, 5m, 1h30m)", 2),
    ("setevnt --client PC1 --ttl soon", "'soon' is not a duration", 2),
    ("setevnt cq", "no targets: give --client, --group, --all or --clients-file", 2),
    ("setevnt --client bad/id cq", "invalid client id 'bad/id'", 2),
    ("setevnt --client PC1 ccim32_startcycle", "case-sensitive: did you mean CCIM32_STARTCYCLE", 2),
    ("setevnt --client PC1 NOPE_STARTCYCLE", "unknown COMPONENT_EVENT 'NOPE_STARTCYCLE'", 2),
    ("setevnt --client PC1 cq CCIM32_CLOSE", "expected at most one of 'cq' or COMPONENT_EVENT", 2),
    ("setevnt --clients-file {missing} cq", "typo.db: No such file or directory", 2),
    ("setevnt --clients-file {ids} cq", "use `setevnt-dispatcher storm CQMGR32_STARTCYCLE", 2),
    ("setevnt --clients-file {ids} --max-targets 200 cq", "to 150 client(s): add --yes", 2),
    ("setevnt --all --db {db} cq", "CQMGR32_STARTCYCLE to 3 client(s): add --yes", 2),
    ("setevnt --all --db {missing} cq", "no setevnt database at", 2),
    ("setevnt --group nobody --db {db} cq", "--group nobody: no registered client is in", 2),
    ("setevnt --client PC1 --max-targets lots", "'lots' is not a count", 2),
    ("setevnt --client PC1 --bogus", "unrecognized arguments: --bogus", 2),
    ("setevnt --print-completion fish", "argument --print-completion: invalid choice: 'fish'", 2),
    ("setevnt-dispatcher --log-level LOUD status", "invalid choice: 'LOUD'", 2),
    ("setevnt-dispatcher status --log-level loud", "invalid choice: 'LOUD'", 2),
    ("setevnt-dispatcher", "the following arguments are required: COMMAND", 2),
    ("setevnt-dispatcher frobnicate", "argument COMMAND: invalid choice: 'frobnicate'", 2),
    ("setevnt-dispatcher serve --metrics-port 99999", "'99999' is not a port (0-65535)", 2),
    ("setevnt-dispatcher serve --metrics-port http", "'http' is not a port (0-65535)", 2),
    ("setevnt-dispatcher serve --upgrade-ttl soon", "'soon' is not a duration", 2),
    ("setevnt-dispatcher storm cq --client PC1", "'cq' is a shortcut of setevnt's syntax", 2),
    ("setevnt-dispatcher storm NOPE_CLOSE --client PC1", "unknown COMPONENT_EVENT 'NOPE_CLOSE'", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE", "no targets", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --client PC1 --rate fast", "not a rate", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --client PC1 --spread 1h30x", "not a dura", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --client PC1 --max-in-flight 150%", "100%", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --client PC1 --confirm-above x", "not a cou", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --client PC1 --ttl 30d", "--ttl 30d is long", 2),
    ("setevnt-dispatcher storm CCIM32_STARTCYCLE --all --db {db}", "as a storm: add --yes", 2),
    ("setevnt-dispatcher storm --all --db {db}", "give the COMPONENT_EVENT to send", 2),
    ("setevnt-dispatcher prune --older-than 30", "'30' has no unit: write 30s, 30m, 30h or 30d", 2),
    ("setevnt-dispatcher prune --older-than 'a month'", "'a month' is not a duration", 2),
    ("setevnt-dispatcher prune", "the following arguments are required: --older-than", 2),
    ("setevnt-dispatcher prune --older-than 1s --db {db}", "prune forgets 1 storm(s)", 2),
    ("setevnt-dispatcher prune --older-than 30d --db {missing}", "no setevnt database at", 2),
    ("setevnt-dispatcher status storm-nope --db {db}", "no storm or command storm-nope", 2),
    ("setevnt-dispatcher resume storm-nope --db {db}", "no storm storm-nope in", 2),
    ("setevnt-dispatcher cancel storm-nope --db {db}", "no storm storm-nope", 2),
    ("setevnt-dispatcher results storm-x --status failed,nope", "'nope' is not a status", 2),
    ("setevnt-dispatcher dead --limit 0", "'0': a count from 1 to 10000", 2),
    ("setevnt-dispatcher clients --offline-after soon", "'soon' is not a duration", 2),
    ("setevnt-dispatcher clients --drifted --db {db}", "no site CopyListVersion to drift from", 2),
    ("setevnt-dispatcher site show --db {db}", "no site CopyListVersion", 2),
    ("setevnt-dispatcher keygen --out {key}/key", "existing.key/key: a parent is not a dir", 1),
    ("setevnt-dispatcher keygen --out {key}", "exists; not replacing a key", 1),
    ("setevnt-dispatcher --print-completion fish", "invalid choice: 'fish'", 2),
    ("setevnt-agent --log-level LOUD check", "argument --log-level: invalid choice: 'LOUD'", 2),
    ("setevnt-agent check --log-level LOUD", "argument --log-level: invalid choice: 'LOUD'", 2),
    ("setevnt-agent", "the following arguments are required: COMMAND", 2),
    ("setevnt-agent check --config {missing}.toml", "typo.db.toml", 2),
    ("setevnt-agent simulate --clients 1 --duration soon", "'soon' is not a duration", 2),
    ("setevnt-agent simulate --clients many", "argument --clients: invalid int value: 'many'", 2),
    ("setevnt-agent hold", "no command given", 2),
]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def argv_of(line: str, **paths: str) -> list[str]:
    import shlex

    words = shlex.split(line.format(**paths))
    return [sys.executable, "-m", MODULES[words[0]], *words[1:]]


def run(argv: list[str], **extra: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal: confirmations need --yes
        capture_output=True,
        text=True,
        timeout=60,
        **extra,  # type: ignore[call-overload]
    )


def fleet_db(path: Path, count: int) -> str:
    now = time.time()
    beats = [
        (
            Heartbeat(
                client_id=f"PC{n}", kind="heartbeat", sent_at=now, platform="nt",
                agent_version="0.1.0", groups=(),
            ),
            now,
        )
        for n in range(1, count + 1)
    ]  # fmt: skip
    with StoreRegistry(DbSettings(str(path))) as registry:
        registry.record(beats)
    return str(path)


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """A fleet of three with one storm finished long ago, 150 ids, an existing key file."""
    db = fleet_db(tmp_path / "fleet.db", 3)
    long_ago = time.time() - 60 * 86400
    old = StormRecord(
        "storm-old", "CCIM32", "STARTCYCLE", {}, 1, "done", None, "ops", long_ago - 60,
        long_ago, long_ago, "pid 1", False,
    )  # fmt: skip
    with Ledger(DbSettings(db)) as ledger:
        sent = CommandRecord(
            "c-old", "storm-old", "PC1", "CCIM32", "STARTCYCLE", "done", expires_at=long_ago
        )
        ledger.create_storm(old, [sent])
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"PC{n:03d}\n" for n in range(150)))
    key = tmp_path / "existing.key"
    key.write_text("not replaced\n")
    return {"db": db, "missing": str(tmp_path / "typo.db"), "ids": str(ids), "key": str(key)}


def test_every_bad_input_is_one_line_and_an_exit_code(
    paths: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever reaches for the broker finds none: bad input must be refused before.
    monkeypatch.setenv("SETEVNT_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F")
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda row: run(argv_of(row[0], **paths)), BAD_INPUT))
    table, wrong = [], []
    for (line, says, code), result in zip(BAD_INPUT, done, strict=True):
        err = result.stderr.strip()
        table.append(f"{line}\n    -> {err}  [exit {result.returncode}]")
        if "Traceback" in err or err.count("\n") or says not in err or result.returncode != code:
            wrong.append(
                f"{line}: expected {says!r} and {code}, got {err!r} and {result.returncode}"
            )
    print(f"\n{len(BAD_INPUT)} bad inputs (input -> message  [exit code]):")
    print("\n".join(table))
    assert len(BAD_INPUT) >= 40
    assert wrong == []


def test_a_broker_that_is_down_is_named_in_one_line(paths: dict[str, str]) -> None:
    port = closed_port()
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    redacted = f"amqp://guest:***@127.0.0.1:{port}/%2F"
    says = f"error: cannot reach the broker at {redacted}: connection refused"
    lines = (
        "setevnt-dispatcher --url {url} declare",
        "setevnt-dispatcher provision PC1 --url {url}",
        "setevnt-dispatcher dead --url {url}",
        "setevnt --url {url} --client PC1 cq",
        "setevnt --client PC1 --url {url} --wait 5s",
    )
    storm_line = "setevnt-dispatcher --url {url} storm CCIM32_STARTCYCLE --client PC1 --db {db}"
    with ThreadPoolExecutor(len(lines) + 1) as pool:  # independent: each only finds no broker
        stormed = pool.submit(run, argv_of(storm_line, url=url, **paths))
        done = list(pool.map(lambda line: run(argv_of(line, url=url)), lines))
    for line, result in zip(lines, done, strict=True):
        assert result.returncode == 3, (line, result.stderr)
        assert result.stderr.strip().count("\n") == 0, (line, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, (line, result.stderr)
    storm = stormed.result()
    assert storm.returncode == 3, storm.stderr
    assert storm.stderr.strip().splitlines()[-1].endswith(says.split("error: ", 1)[1])


def test_output_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """More output than a pipe holds, and a reader that goes away after one line: the
    shell's SIGPIPE status (141) and nothing on stderr, as with any Unix tool."""
    db = fleet_db(tmp_path / "big.db", 3000)

    def piped(line: str) -> subprocess.CompletedProcess[str]:
        argv = " ".join(argv_of(line, db=db))
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{argv} | head -1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    lines = ("setevnt-dispatcher clients --db {db}", "setevnt-dispatcher clients --json --db {db}")
    with ThreadPoolExecutor(len(lines)) as pool:  # independent readers of one database
        done = list(pool.map(piped, lines))
    for shown in done:
        assert shown.stdout.count("\n") == 1
        assert shown.stderr == "", shown.stderr
        assert shown.returncode == 141


@pytest.mark.parametrize("name", MODULES)
def test_version(name: str) -> None:
    shown = run(argv_of(f"{name} --version"))
    assert shown.returncode == 0
    assert re.fullmatch(rf"{name} \d+\.\d+\.\S+\n", shown.stdout)


def test_completion_is_written_for_bash_and_zsh() -> None:
    markers = {"bash": "complete", "zsh": "#compdef"}
    with ThreadPoolExecutor(len(markers)) as pool:  # independent: run at once
        done = pool.map(
            lambda shell: run(argv_of(f"setevnt-dispatcher --print-completion {shell}")), markers
        )
    for marker, shown in zip(markers.values(), done, strict=True):
        assert shown.returncode == 0 and marker in shown.stdout
        assert "storm" in shown.stdout and "--older-than" in shown.stdout


def test_a_dry_run_counts_and_publishes_nothing(
    paths: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no broker at all: a dry run never connects, and plans no storm."""
    monkeypatch.setenv("SETEVNT_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F")
    dry_runs = (
        "setevnt --all --db {db} cq --dry-run",
        "setevnt-dispatcher storm CCIM32_STARTCYCLE --all --dry-run --json --db {db}",
    )
    with ThreadPoolExecutor(len(dry_runs)) as pool:  # independent: neither writes anything
        shown, storm = pool.map(lambda line: run(argv_of(line, **paths)), dry_runs)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "dry run: would send CQMGR32_STARTCYCLE to 3 client(s)",
        "  PC1, PC2, PC3",
    ]
    assert storm.returncode == 0, storm.stderr
    assert '"targets": 3' in storm.stdout and '"dry_run": true' in storm.stdout
    listed = run(argv_of("setevnt-dispatcher status --json --db {db}", **paths))
    assert [line.count("storm-old") for line in listed.stdout.splitlines()] == [1], "no new storm"


@pytest.mark.parametrize(("answer", "code", "says"), [("y", 0, "forgot 1 storm(s)"), ("n", 1, "")])
def test_prune_asks_on_a_terminal(paths: dict[str, str], answer: str, code: int, says: str) -> None:
    """On a terminal prune asks, and forgets only after a "y"."""
    import pty

    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            argv_of("setevnt-dispatcher prune --older-than 1s --db {db}", **paths),
            cwd=ROOT,
            stdin=secondary,
            stderr=secondary,
            stdout=subprocess.PIPE,
            text=True,
        )
        asked = b""
        deadline = time.monotonic() + 30
        while b"[y/N]" not in asked and time.monotonic() < deadline:
            asked += os.read(primary, 1024)
        assert b"forget 1 storm(s) and 1 command(s) from before" in asked
        os.write(primary, f"{answer}\n".encode())
        out, _ = process.communicate(timeout=30)
    finally:
        os.close(primary)
        os.close(secondary)
    assert process.returncode == code
    assert says in out if says else out == ""
