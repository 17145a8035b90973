"""The threads of the dispatcher service, as one: if any of them ends, the service ends.

A consumer thread that died while the process lived on would leave a half-alive service
(acks still collected, requests never taken, or the reverse) that no supervisor notices.
Each member runs a blocking ``run`` and has a ``stop``; :meth:`Crew.wait` returns as soon
as one member ended or a stop was asked, and the caller stops the rest and exits, with a
non-zero status when a member failed, so that systemd restarts the whole service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from broker.errors import BrokerError, BrokerRefused

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_REFUSED = 3  # the broker refused us: as the CLIs say it


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    run: Callable[[], None]
    stop: Callable[[], None]


class Crew:
    def __init__(self) -> None:
        self._members: list[tuple[Member, threading.Thread]] = []
        self._ended = threading.Event()
        self._stopping = threading.Event()
        self._failure: tuple[str, BaseException | None] | None = None
        self._lock = threading.Lock()

    def start(self, member: Member) -> None:
        thread = threading.Thread(target=self._run, args=(member,), name=member.name)
        self._members.append((member, thread))
        thread.start()

    def stop(self) -> None:
        """Ask every member to stop (safe from a signal handler)."""
        self._stopping.set()
        self._ended.set()

    def wait(self) -> int:
        """Block until a member ends or :meth:`stop`; stop them all; the exit status."""
        self._ended.wait()
        for member, _thread in self._members:
            member.stop()
        for _member, thread in self._members:
            thread.join()
        if self._failure is None:
            return 0
        _name, error = self._failure
        return EXIT_REFUSED if isinstance(error, BrokerRefused) else EXIT_FAILED

    def _run(self, member: Member) -> None:
        error: BaseException | None = None
        try:
            member.run()
        except BrokerError as exc:  # the broker's own words say it all
            error = exc
            log.critical("%s stopped: %s", member.name, exc)
        except BaseException as exc:  # the thread ends either way: say why, once
            error = exc
            log.critical("%s stopped: %s", member.name, exc, exc_info=exc)
        with self._lock:
            if not self._stopping.is_set() and self._failure is None:
                if error is None:
                    log.critical("%s ended unexpectedly: stopping the service", member.name)
                self._failure = (member.name, error)
        self._ended.set()
