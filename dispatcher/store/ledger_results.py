"""What the ledger says each client answered: per-client results and their reasons.

``results``, ``storm --retry-from``, the report's failure tables and ``dead`` read the
ledger through here. A command still pending past its expiry counts ``expired`` (as in
:meth:`dispatcher.store.ledger.Ledger.counts_at`): the broker dropped it unanswered. So
does a one-off command still ``planned`` past its expiry. Every text
here was written by an agent, so it is cut to a bounded length in the query itself.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from dispatcher.store.db import Connection, Dialect
from dispatcher.store.ledger_rows import PENDING

DETAIL_MAX = 1024
OUTPUT_TAIL = 2048  # the last characters of a command's output: where errors usually are
MAX_REASONS = 50  # rows of a by-reason table, whatever the ledger holds

_PENDING = ", ".join(f"'{s}'" for s in sorted(PENDING))
# A one-off command left `planned` lost its process (or the service that claimed it)
# before the broker's answer was recorded; nothing sends it again, so past its expiry it
# is as lapsed as a pending one. A storm's planned commands wait for `resume` instead.
_LAPSES = f"(status IN ({_PENDING}) OR (status = 'planned' AND storm_id IS NULL))"
_EFFECTIVE = f"CASE WHEN {_LAPSES} AND expires_at <= :now THEN 'expired' ELSE status END"


@functools.cache
def _columns(dialect: Dialect) -> str:
    return (
        f"command_id, storm_id, client_id, component, event, {_EFFECTIVE}, status, reason, "
        f"substr(detail, 1, {DETAIL_MAX}), exit_code, {dialect.tail_of('output', OUTPUT_TAIL)}, "
        "latency, acked_at, expires_at"
    )


@dataclass(frozen=True, slots=True)
class ClientResult:
    """One command's outcome at its client, as the ledger has it."""

    command_id: str
    storm_id: str | None
    client_id: str
    component: str | None
    event: str | None
    status: str  # the ledger's, or "expired" for a pending command past its expiry
    recorded_status: str  # the ledger's own
    reason: str | None
    detail: str | None
    exit_code: int | None
    output: str | None  # its tail
    latency: float | None
    acked_at: float | None
    expires_at: float | None

    @property
    def lapsed(self) -> bool:
        """Pending in the ledger, but expired: nobody answered before its time ran out."""
        return self.status != self.recorded_status


@dataclass(frozen=True, slots=True)
class ReasonCount:
    status: str
    reason: str | None
    commands: int
    example: str | None  # one of their details


def of_storm(
    connection: Connection,
    storm_id: str,
    now: float,
    statuses: Collection[str] | None = None,
    limit: int | None = None,
) -> Iterator[ClientResult]:
    """The storm's commands by client, only those whose status is in ``statuses`` if given."""
    params: dict[str, object] = {"storm": storm_id, "now": now, "limit": limit}
    where = "storm_id = :storm"
    if statuses is not None:
        names = sorted(statuses)
        params.update({f"s{n}": name for n, name in enumerate(names)})
        where += f" AND {_EFFECTIVE} IN ({','.join(f':s{n}' for n in range(len(names)))})"
    rows = connection.execute(
        f"SELECT {_columns(connection.dialect)} FROM commands WHERE {where} "
        f"ORDER BY client_id, command_id{' LIMIT :limit' if limit else ''}",
        params,
    )
    return (ClientResult(*row) for row in rows)


def of_command(connection: Connection, command_id: str, now: float) -> ClientResult | None:
    row = connection.execute(
        f"SELECT {_columns(connection.dialect)} FROM commands WHERE command_id = :command",
        {"command": command_id, "now": now},
    ).fetchone()
    return ClientResult(*row) if row is not None else None


def reasons(
    connection: Connection, storm_id: str, now: float, statuses: Collection[str]
) -> list[ReasonCount]:
    """The storm's commands with these statuses, counted by status and reason, most first."""
    names = sorted(statuses)
    params: dict[str, object] = {f"s{n}": name for n, name in enumerate(names)}
    params.update({"storm": storm_id, "now": now, "limit": MAX_REASONS})
    rows = connection.execute(
        f"SELECT {_EFFECTIVE} AS effective, reason, count(*), min(substr(detail, 1, 200)) "
        f"FROM commands WHERE storm_id = :storm AND {_EFFECTIVE} IN "
        f"({','.join(f':s{n}' for n in range(len(names)))}) "
        "GROUP BY effective, reason ORDER BY count(*) DESC, effective, reason LIMIT :limit",
        params,
    )
    return [ReasonCount(*row) for row in rows]
