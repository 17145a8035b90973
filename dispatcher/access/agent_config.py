"""The agent configuration ``enroll`` hands an administrator: complete, and minimal.

Complete, so that a freshly enrolled agent neither fakes success nor refuses to start for
a reason the dispatcher knew: its broker user, a journal on disk, the dispatcher's public
key, and an explicitly chosen backend. Minimal, so that it holds only standard keys that
``setevnt-agent check`` accepts as they are. Values are written by tomli-w (quoting a
password or a path is its job, not ours); the comments around them are ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

# The agent's backend names (agent/backends), in the order `--backend` offers them.
BACKENDS = ("exec", "posix-signal", "file", "win32-event", "simulated")
DEFAULT_BACKEND = "exec"
# Where the packaged agent keeps its journal (the systemd unit's StateDirectory).
DEFAULT_JOURNAL = "/var/lib/setevnt/journal"


@dataclass(frozen=True, slots=True)
class EnrolledConfig:
    """An agent config as `enroll` writes it for a new client (the agent reads it as
    :class:`agent.config.AgentConfig`)."""

    client_id: str
    url: str  # with the client's own broker user and password
    public_key: str | None  # None: the operator chose --unsigned
    backend: str = DEFAULT_BACKEND
    events: tuple[str, ...] = ()  # the catalog's COMPONENT_EVENT names, for the examples

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )

    def toml(self) -> str:
        blocks = [
            _comment(
                "setevnt agent configuration written by `setevnt-dispatcher enroll`.",
                "Install it as /etc/setevnt/agent.toml (mode 0600: it holds a broker password),",
                "fill in the backend below, then `setevnt-agent check --config FILE`.",
            )
            + tomli_w.dumps({"client_id": self.client_id}),
            tomli_w.dumps({"broker": {"url": self.url}}),
            _comment("Commands already run, kept until they expire: never run twice.")
            + tomli_w.dumps({"agent": {"journal": DEFAULT_JOURNAL}}),
            self._security(),
            _BACKEND_TEXT[self.backend](self.events),
        ]
        return "\n".join(block.rstrip("\n") + "\n" for block in blocks)

    def _security(self) -> str:
        if self.public_key is not None:
            return _comment("The agent runs only commands signed with this dispatcher's key.") + (
                tomli_w.dumps({"security": {"dispatcher_public_key": self.public_key}})
            )
        return _comment(
            "Enrolled with --unsigned: this agent runs commands nobody signed. For",
            "development only: anyone who can publish to its queue can make it act.",
        ) + tomli_w.dumps({"security": {"allow_unsigned": True}})


def write_new(path: str | Path, text: str) -> None:
    """Create ``path`` (mode 0600: it holds a password); never replace an existing file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)


def _comment(*lines: str) -> str:
    return "".join(f"# {line}\n" for line in lines)


def _exec(events: Iterable[str]) -> str:
    examples = [f'{name} = ["/path/to/program", "--argument"]' for name in events]
    return (
        _comment("Each COMPONENT_EVENT runs its program (no shell); an event without one")
        + _comment("is acked failed. Fill in the programs of this client's components:")
        + tomli_w.dumps({"backend": {"type": "exec", "exec": {"commands": {}}}})
        + _comment(*examples)
    )


def _signal(events: Iterable[str]) -> str:
    examples = [
        f'{name} = {{ pidfile = "/run/component.pid", signal = "USR1" }}' for name in events
    ]
    return (
        _comment("Each COMPONENT_EVENT signals the process in its pidfile. Fill them in:")
        + tomli_w.dumps({"backend": {"type": "posix-signal", "posix-signal": {"events": {}}}})
        + _comment(*examples)
    )


def _file(events: Iterable[str]) -> str:
    return (
        _comment("Each event writes COMPONENT_EVENT.trigger into a directory the components")
        + _comment("watch (or its name into a FIFO). Set one of them:")
        + tomli_w.dumps({"backend": {"type": "file"}})
        + _comment("[backend.file]", 'directory = "/var/lib/setevnt/triggers"')
    )


def _win32_event(events: Iterable[str]) -> str:
    return _comment(
        "SetEvent on the named kernel event COMPONENT_EVENT, as SetEvnt.exe did."
    ) + tomli_w.dumps({"backend": {"type": "win32-event"}})


def _simulated(events: Iterable[str]) -> str:
    return _comment(
        "Simulated components: the agent answers done and runs NOTHING on this machine.",
        "For trials and load tests only.",
    ) + tomli_w.dumps({"backend": {"type": "simulated"}})


_BACKEND_TEXT: dict[str, Callable[[Iterable[str]], str]] = {
    "exec": _exec,
    "posix-signal": _signal,
    "file": _file,
    "win32-event": _win32_event,
    "simulated": _simulated,
}


def parse_backend(text: str) -> str:
    """``--backend``: an agent backend name (``signal`` is ``posix-signal``)."""
    name = {"signal": "posix-signal"}.get(text, text)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {text!r}; choose one of {', '.join(BACKENDS)}")
    return name
