"""setevnt's broker errors: what a caller can act on, not what pika happened to raise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class BrokerError(Exception):
    """Base of every broker failure setevnt reports."""


class ConnectionLost(BrokerError):
    """The connection dropped or could not be opened; retrying later may work.

    ``unsent`` lists what a publisher had not got confirmed, so a caller can send it again.
    """

    def __init__(self, *args: object, unsent: Iterable[Any] = ()) -> None:
        super().__init__(*args)
        self.unsent: list[Any] = list(unsent)


class BrokerRefused(BrokerError):
    """The broker said no (bad credentials, access refused, precondition failed).

    Retrying the same thing will not help, so supervisors stop and say why.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ConfirmTimeout(ConnectionLost):
    """Published messages were neither confirmed nor refused in time."""
