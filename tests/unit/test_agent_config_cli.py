"""Bad agent configs through the real CLI: one line naming the key, exit 2, no traceback.

Each config of the table goes through ``setevnt-agent check --config F`` and
``setevnt-agent run --config F``, which must refuse it with the same line. The table as
these tests run it is printed by ``python -m tests.unit.test_agent_config_cli``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import (
    NO_BACKEND,
    NO_JOURNAL,
    NO_SECURITY_DECISION,
    load,
)
from agent.config import (
    PUBLIC_KEY_PLACEHOLDER as PLACEHOLDER,
)
from schemas.signing import Signer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "agent.example.toml"
KEY = Signer.generate().public_text()
# Nothing listens there: a config that wrongly passed would never reach a broker.
NOWHERE = "amqp://guest:guest@127.0.0.1:1/%2F"
DURATION_RULE = "is not a duration (e.g. 30s, 5m, 1h30m)"


def base(journal: str = "JOURNAL") -> dict[str, str]:
    """A valid config as sections of text, the shape `setevnt-dispatcher enroll` writes."""
    return {
        "top": 'client_id = "PC042"\n',
        "broker": f'[broker]\nurl = "{NOWHERE}"\n',
        "agent": f'[agent]\njournal = "{journal}"\n',
        "security": f'[security]\ndispatcher_public_key = "{KEY}"\n',
        "backend": '[backend]\ntype = "exec"\n',
        "exec": "[backend.exec.commands]\n",
    }


@dataclass(frozen=True)
class Case:
    name: str
    changes: dict[str, str]  # section -> its new text ("" drops it)
    message: str  # after "setevnt-agent: "; {config} is "config PATH: "

    def text(self, journal: str) -> str:
        sections = {**base(), **self.changes}
        return "".join(part for part in sections.values() if part).replace("JOURNAL", journal)


AGENT = '[agent]\njournal = "JOURNAL"\n'
EXEC = "[backend.exec.commands]\n"
CASES = [
    Case("journal typo", {"agent": '[agent]\njournel = "/var/lib/setevnt/journal"\n'}, ""),
    Case("[brokr]", {"broker": '[brokr]\nurl = "amqp://host/"\n'}, ""),
    Case("url typo", {"broker": '[broker]\nurll = "amqp://host/"\n'}, ""),
    Case("exec timeout typo", {"exec": f"[backend.exec]\ntimeuot = 30\n{EXEC}"}, ""),
    Case("exec event typo", {"exec": f'{EXEC}CCIM32_STARTCYCL = ["/bin/true"]\n'}, ""),
    Case("commands a string", {"exec": '[backend.exec]\ncommands = "oops"\n'}, ""),
    Case("'60x'", {"agent": AGENT + 'hello_interval = "60x"\n'}, ""),
    Case("'x'", {"agent": AGENT + 'hello_interval = "x"\n'}, ""),
    Case("nan", {"agent": AGENT + "hello_interval = nan\n"}, ""),
    Case("inf", {"agent": AGENT + "max_command_lifetime = inf\n"}, ""),
    Case("negative", {"agent": AGENT + "hello_interval = -5\n"}, ""),
    Case("'5 minutes'", {"exec": f'[backend.exec]\ntimeout = "5 minutes"\n{EXEC}'}, ""),
    Case("port 99999", {"exec": EXEC + "[metrics]\nport = 99999\n"}, ""),
    Case("port as text", {"exec": EXEC + '[metrics]\nport = "9809"\n'}, ""),
    Case("backend typo", {"backend": '[backend]\ntype = "exce"\n'}, ""),
    Case("no backend", {"backend": "", "exec": ""}, ""),
    Case("[backend.exce]", {"exec": '[backend.exce]\ntimeout = "5m"\n'}, ""),
    Case("guard typo", {"exec": EXEC + "[guard]\npoll_intervall = 1\n"}, ""),
    Case("unsigned as text", {"security": '[security]\nallow_unsigned = "yes"\n'}, ""),
    Case("platform", {"top": 'client_id = "PC042"\nplatform = "macos"\n'}, ""),
    Case("argv a string", {"exec": f'{EXEC}CCIM32_STARTCYCLE = "/bin/true"\n'}, ""),
    Case("client_id typo", {"top": 'clientid = "PC042"\n'}, ""),
    Case("heartbeat", {"broker": f'[broker]\nurl = "{NOWHERE}"\nheartbeat = "soon"\n'}, ""),
    Case("groups", {"top": 'client_id = "PC042"\ngroups = "lab-1"\n'}, ""),
    Case("no journal", {"agent": ""}, ""),
    Case(
        "placeholder key",
        {"security": f'[security]\ndispatcher_public_key = "{PLACEHOLDER}"\n'},
        "",
    ),
    Case("private env", {"exec": f'[backend.exec]\nenv = ["SETEVNT_AMQP_URL"]\n{EXEC}'}, ""),
    Case("disruptive typo", {"exec": EXEC + '[guard]\ndisruptive = ["CCIM32_STARTCYCL"]\n'}, ""),
    Case("component name", {"exec": EXEC + '[[components]]\ntitle = "Setup"\n'}, ""),
]
MESSAGES = {
    "journal typo": "{config}agent.journel: unknown key; did you mean journal?",
    "[brokr]": "{config}[brokr]: unknown table; did you mean [broker]?",
    "url typo": "{config}broker.urll: unknown key; did you mean url?",
    "exec timeout typo": "{config}backend.exec.timeuot: unknown key; did you mean timeout?",
    "exec event typo": "{config}backend.exec.commands.CCIM32_STARTCYCL: unknown event; "
    "did you mean CCIM32_STARTCYCLE?",
    "commands a string": "{config}backend.exec.commands: must be a table, not a string",
    "'60x'": "{config}agent.hello_interval: '60x' " + DURATION_RULE,
    "'x'": "{config}agent.hello_interval: 'x' " + DURATION_RULE,
    "nan": "{config}agent.hello_interval: must be a positive, finite duration",
    "inf": "{config}agent.max_command_lifetime: must be a positive, finite duration",
    "negative": "{config}agent.hello_interval: must be a positive, finite duration",
    "'5 minutes'": "{config}backend.exec.timeout: '5 minutes' " + DURATION_RULE,
    "port 99999": "{config}metrics.port: must be a TCP port from 0 to 65535 (0 picks a free one)",
    "port as text": "{config}metrics.port: must be an integer, not a string",
    "backend typo": "{config}backend.type: unknown backend 'exce'; did you mean exec?",
    "no backend": NO_BACKEND,
    "[backend.exce]": "{config}[backend.exce]: unknown table; did you mean [backend.exec]?",
    "guard typo": "{config}guard.poll_intervall: unknown key; did you mean poll_interval?",
    "unsigned as text": "{config}security.allow_unsigned: must be true or false, not a string",
    "platform": "{config}platform: unknown platform 'macos' (known: nt, win9x)",
    "argv a string": "{config}backend.exec.commands.CCIM32_STARTCYCLE: must be a non-empty "
    'array of strings, e.g. ["/path/program", "arg"]',
    "client_id typo": "{config}clientid: unknown key; did you mean client_id?",
    "heartbeat": "{config}broker.heartbeat: 'soon' " + DURATION_RULE,
    "groups": "{config}groups: must be an array, not a string",
    "no journal": NO_JOURNAL,
    "placeholder key": NO_SECURITY_DECISION,
    "private env": "{config}backend.exec: env may not pass SETEVNT_AMQP_URL: the agent's own "
    "settings (the broker password among them) stay out of programs",
    "disruptive typo": "{config}guard.disruptive: unknown event CCIM32_STARTCYCL; did you mean "
    "CCIM32_STARTCYCLE?",
    "component name": "{config}components[0].name: is required (an upper case name, e.g. CLISETUP)",
}


def agent_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SETEVNT_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def expected(case: Case, path: Path) -> str:
    return MESSAGES[case.name].replace("{config}", f"config {path}: ")


def refused(path: Path, command: str) -> tuple[str, int]:
    """The one line ``setevnt-agent COMMAND --config path`` refuses with, and its exit."""
    shown = agent_cli(command, "--config", str(path))
    assert "Traceback" not in shown.stderr, shown.stderr
    lines = shown.stderr.splitlines()
    assert len(lines) == 1, shown.stderr
    assert shown.stdout == ""
    return lines[0].removeprefix("setevnt-agent: "), shown.returncode


def test_the_table_has_every_typo_of_the_issue() -> None:
    assert len(CASES) >= 20 and {c.name for c in CASES} == set(MESSAGES)
    text = "".join(c.text("J") for c in CASES)
    for typo in ("journel", "[brokr]", "urll", "timeuot", "CCIM32_STARTCYCL", '"60x"', '"x"'):
        assert typo in text
    assert 'commands = "oops"' in text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_config_is_one_line_and_exit_2_from_check_and_run(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(case.text(str(tmp_path / "state" / "journal")), encoding="utf-8")
    want = expected(case, path)
    with ThreadPoolExecutor(2) as pool:  # independent refusals of one file: run at once
        check, run = pool.map(lambda command: refused(path, command), ("check", "run"))
    assert check == (want, 2)
    assert run == (want, 2)


def test_the_config_enroll_writes_passes_check(tmp_path: Path) -> None:
    """client_id, [broker] url, [agent] journal, the key, exec with no commands yet."""
    path = tmp_path / "agent.toml"
    path.write_text("".join(base(str(tmp_path / "journal")).values()), encoding="utf-8")
    shown = agent_cli("check", "--config", str(path))
    assert shown.returncode in (0, 1), shown.stderr  # 1: this machine's dpkg is busy
    assert "start-up checks (what `run` checks first): all passed" in shown.stdout
    assert "[backend.exec.commands] is empty" in shown.stdout
    report = json.loads(agent_cli("check", "--json", "--config", str(path)).stdout)
    assert report["ok"] is True and report["backend"] == "exec"
    assert [c["check"] for c in report["checks"]] == ["backend", "security", "journal", "guard"]
    assert all(c["ok"] for c in report["checks"])


def test_check_json_carries_the_refusal(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CASES[0].text(str(tmp_path / "journal")), encoding="utf-8")
    shown = agent_cli("check", "--json", "--config", str(path))
    assert shown.returncode == 2
    report = json.loads(shown.stdout)
    assert report == {"ok": False, "config": str(path), "error": expected(CASES[0], path)}


def test_the_example_is_refused_only_for_its_key_placeholder(tmp_path: Path) -> None:
    journal = ["--journal", str(tmp_path / "journal")]  # /var/lib may not be ours to create
    assert refused(EXAMPLE, "check") == (NO_SECURITY_DECISION, 2)
    shown = agent_cli("check", "--config", str(EXAMPLE), *journal)
    assert shown.returncode == 2 and shown.stderr.strip().endswith(NO_SECURITY_DECISION)
    keyed = agent_cli(
        "check", "--config", str(EXAMPLE), *journal, env={"SETEVNT_DISPATCHER_PUBLIC_KEY": KEY}
    )
    assert keyed.returncode in (0, 1), keyed.stderr
    assert "all passed" in keyed.stdout


def test_a_bad_backend_flag_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("".join(base(str(tmp_path / "journal")).values()), encoding="utf-8")
    with ThreadPoolExecutor(2) as pool:  # independent refusals: run at once
        shown_by = pool.map(
            lambda command: agent_cli(command, "--config", str(path), "--backend", "exce"),
            ("check", "run"),
        )
    for shown in shown_by:
        assert shown.returncode == 2
        assert (
            shown.stderr == "setevnt-agent: --backend: unknown backend 'exce'; did you mean exec?\n"
        )


def test_signal_names_the_posix_signal_backend_and_its_table(tmp_path: Path) -> None:
    sections = base(str(tmp_path / "journal"))
    sections["backend"] = '[backend]\ntype = "signal"\n'
    sections["exec"] = '[backend.signal.events]\nCCIM32_CLOSE = { pidfile = "/run/c.pid" }\n'
    path = tmp_path / "agent.toml"
    path.write_text("".join(sections.values()), encoding="utf-8")
    config = load(path, environ={})
    assert config.backend == "posix-signal"
    assert config.backend_options == {"events": {"CCIM32_CLOSE": {"pidfile": "/run/c.pid"}}}


def test_durations_read_as_text_and_numbers(tmp_path: Path) -> None:
    sections = base(str(tmp_path / "journal"))
    sections["agent"] += 'hello_interval = "1h30m"\nmax_command_lifetime = 600\n'
    sections["exec"] = '[backend.exec]\ntimeout = "90s"\n[backend.exec.commands]\n'
    path = tmp_path / "agent.toml"
    path.write_text("".join(sections.values()), encoding="utf-8")
    config = load(path, environ={})
    assert (config.hello_interval, config.max_command_lifetime) == (5400.0, 600.0)
    assert config.backend_options["timeout"] == 90.0


def test_an_environment_url_of_another_user_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('client_id = "PC042"\n[broker]\nurl = "amqp://pc042:s3cret@h/v"\n')
    with caplog.at_level(logging.WARNING, logger="agent.config"):
        load(path, environ={"SETEVNT_AMQP_URL": "amqp://pc042:other@h/v"})
    assert caplog.messages == []  # the same user: nothing to say
    with caplog.at_level(logging.WARNING, logger="agent.config"):
        load(path, environ={"SETEVNT_AMQP_URL": "amqp://guest:guest@h/v"})
    (message,) = caplog.messages
    assert message.startswith(f"$SETEVNT_AMQP_URL overrides the [broker] url of {path}: ")
    assert "connects as broker user guest, not pc042" in message
    assert "s3cret" not in message and "guest:guest" not in message


def table() -> list[tuple[str, str, int]]:
    """Each case through ``check`` and ``run``: (input, message, exit code)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.toml"
        for case in CASES:
            path.write_text(case.text(f"{tmp}/journal"), encoding="utf-8")
            line, status = refused(path, "check")
            assert (line, status) == refused(path, "run")
            changed = " | ".join(
                v.strip().replace("\n", " ") if v else f"(no {k} section)"
                for k, v in case.changes.items()
            )
            rows.append((changed, line.replace(str(path), "F"), status))
    return rows


if __name__ == "__main__":
    for given, message, status in table():
        print(f"{given}\n    -> {message}  (exit {status})")
