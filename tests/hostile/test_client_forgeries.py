"""A client's own credentials against everything they reach (issue 21, item 1).

An enrolled client may publish to ``setevnt.acks`` with the routing keys ``ack.<id>``
and ``hello.<id>`` only, under ``user_id`` = its client id (the broker checks both).
That reaches the collector (acks and publish reports share ``setevnt.acks``) and the
fleet registry (``setevnt.fleet``). From there nothing it sends may stop a consumer,
grow the metric series, add or change ledger rows it does not own, or count as
published; the next genuine command (``setevnt --client ID CQMGR32_STARTCYCLE --wait
30``) and service request must still complete.

Batches: hypothesis msgpack (every message type, broken, on both keys; any value with
keys that are not text, ext types, extreme integers, NaN, nesting; near-msgpack bytes;
1 MiB bodies), then targeted forgeries: 2,000 acks naming components and events outside
the catalog, publish-reports with huge counts, acks for command ids that do not exist or
belong to another client, acks naming a storm of the sender's choosing, deferred acks
without times.

Reproduce, with the figures tables (also written under the base temp directory):

    CI=true .venv/bin/python -m pytest tests/hostile/test_client_forgeries.py -rP \\
        --basetemp /tmp/hostile
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import pytest

from broker import topology
from dispatcher import Client
from schemas.codec import encode
from schemas.messages import Ack, Message, PublishCount, PublishReport, Reason
from tests.hostile.batch import Batch, conclude, judge
from tests.hostile.site import GENUINE_EVENT, Publication, Sent, Site, poll
from tests.hostile.wire import big_bodies, draw, hostile_values, new_id, pack, raw_bodies, shaped
from tests.integration.helpers import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

SHAPED = 160  # broken messages of every type
VALUES = 60  # any msgpack value
RAW = 60  # bytes that are not quite msgpack
FOREIGN_NAMES = 2000
REPORTS = 50
FORGERIES = 100  # per kind of targeted ack


def _send(site: Site, kind: str, messages: Iterable[Message | bytes], *, key: str = "ack") -> Sent:
    """Publish as the client, on its own ``ack.<id>`` (or ``hello.<id>``) key."""
    routing = (
        topology.ack_routing_key(site.client_id)
        if key == "ack"
        else topology.hello_routing_key(site.client_id)
    )
    bodies = (m if isinstance(m, bytes) else encode(m) for m in messages)
    items = (
        Publication(topology.ACK_EXCHANGE, routing, body, user_id=site.client_id) for body in bodies
    )
    return site.publish(site.client_url, "client (own user)", kind, items)


def _ack(site: Site, **fields: object) -> Ack:
    now = time.time()
    values: dict[str, object] = {
        "command_id": new_id(),
        "client_id": site.client_id,
        "status": "done",
        "received_at": now,
        "agent_version": "hostile",
        "component": "CQMGR32",
        "event": "STARTCYCLE",
        "issued_at": now - 1.0,
        "started_at": now,
        "finished_at": now,
        "run_seconds": 0.01,
        **fields,
    }
    return Ack(**values)  # type: ignore[arg-type]


def test_hypothesis_msgpack_on_both_keys(site: Site, figures: list[Batch]) -> None:
    bodies = [
        *draw(shaped(client_id=site.client_id), SHAPED),
        *draw(hostile_values().map(pack), VALUES),
        *draw(raw_bodies(), RAW),
    ]
    before = site.snapshot()
    sent = [
        _send(site, "hypothesis msgpack on ack.<id>", bodies),
        _send(site, "hypothesis msgpack on hello.<id>", bodies, key="hello"),
        _send(site, "1 MiB bodies on ack.<id>", big_bodies(3)),
        _send(site, "1 MiB bodies on hello.<id>", big_bodies(3), key="hello"),
    ]
    anonymous = draw(shaped(kinds=("ack", "heartbeat"), client_id=site.client_id), 20)
    key = topology.ack_routing_key(site.client_id)
    items = [Publication(topology.ACK_EXCHANGE, key, body) for body in anonymous]
    sent.append(site.publish(site.client_url, "client, no user_id", "broken acks", items))
    conclude(figures, judge(site, "client: hypothesis", before, sent))


def test_publish_reports_with_huge_counts(site: Site, figures: list[Batch]) -> None:
    """Only dispatchers publish; a client's report must not count."""
    huge = 2**31 - 1
    report = PublishReport(
        publisher="setevnt-dispatcher",
        published_at=time.time(),
        counts=tuple(
            PublishCount(component, "STARTCYCLE", result, huge)
            for component in ("CCIM32", "CQMGR32")
            for result in ("sent", "unroutable", "nacked")
        ),
    )
    before = site.snapshot()
    sent = [_send(site, f"publish-reports counting {huge:,} per result", [report] * REPORTS)]
    conclude(figures, judge(site, "client: publish reports", before, sent))


def test_acks_for_commands_that_are_not_theirs(site: Site, figures: list[Batch]) -> None:
    """Acks never create a ledger row, and never settle another client's command."""
    theirs, storm_id = _another_clients_commands(site)
    rows_before = _rows(site, theirs)
    storm_before = _storm_counts(site, storm_id)
    chosen_storm = f"storm-hostile-{new_id()[:12]}"
    before = site.snapshot()

    def bare(status: str = "done", **fields: object) -> Ack:
        return Ack(  # no times at all: what a forger leaves out
            command_id=str(fields.pop("command_id", new_id())),
            client_id=site.client_id,
            status=status,
            received_at=time.time(),
            agent_version="hostile",
            **fields,  # type: ignore[arg-type]
        )

    sent = [
        _send(
            site,
            "acks for command ids that do not exist",
            (_ack(site, status=("done", "failed", "expired")[n % 3]) for n in range(FORGERIES)),
        ),
        _send(
            site,
            "acks for another client's commands",
            (_ack(site, command_id=cid, status=s) for cid in theirs for s in ("done", "failed")),
        ),
        _send(
            site,
            "acks naming a running storm",
            (_ack(site, storm_id=storm_id) for _ in range(FORGERIES)),
        ),
        _send(
            site,
            "acks naming a storm of the sender's choosing",
            (_ack(site, storm_id=chosen_storm) for _ in range(FORGERIES)),
        ),
        _send(
            site,
            "deferred acks without times",
            [
                *(bare("deferred") for _ in range(FORGERIES)),
                *(bare("deferred", command_id=cid) for cid in theirs),
                *(bare("deferred", storm_id=storm_id) for _ in range(10)),
            ],
        ),
    ]

    def unchanged() -> list[str]:
        found = []
        after = _rows(site, theirs)
        for cid in theirs:
            if after[cid] != rows_before[cid]:
                found.append(f"{site.quiet_id}'s command {cid}: {rows_before[cid]} -> {after[cid]}")
        counts = _storm_counts(site, storm_id)
        if counts != storm_before:
            found.append(f"storm {storm_id} of {site.quiet_id}: {storm_before} -> {counts}")
        chosen = site.query("SELECT count(*) FROM commands WHERE storm_id = ?", chosen_storm)
        if chosen[0][0]:
            found.append(f"{chosen[0][0]} ledger rows name the invented storm {chosen_storm}")
        return found

    batch = judge(site, "client: acks not theirs", before, sent, checks=unchanged)
    conclude(figures, batch)


def test_acks_naming_components_outside_the_catalog(site: Site, figures: list[Batch]) -> None:
    """Valid acks in every respect but the names: label values chosen by the sender.

    Last in the module: on code that labels by them it leaves >100,000 series behind,
    which every later scrape would have to read."""

    def forged() -> Iterator[Ack]:
        statuses = ("done", "failed", "rejected", "deferred")
        for n in range(FOREIGN_NAMES):
            status = statuses[n % len(statuses)]
            names = {"component": f"ZZ{n:05d}"} if n % 2 else {"event": f"EV{n:05d}"}
            reason = {"reason": Reason.BUSY.value} if status == "rejected" else {}
            yield _ack(site, status=status, **names, **reason)

    before = site.snapshot()
    sent = [
        _send(
            site, f"acks naming {FOREIGN_NAMES:,} components/events outside the catalog", forged()
        )
    ]
    conclude(figures, judge(site, "client: names outside the catalog", before, sent))


def _another_clients_commands(site: Site) -> tuple[list[str], str]:
    """Two commands of the quiet client (one single, one a request storm's), and that
    storm; set up before the batch's first snapshot, so they are not the batch's rows."""
    counted = site.published()
    done = site.fleet.setevnt("--client", site.quiet_id, GENUINE_EVENT, "--json")
    assert done.returncode == 0, done.stderr
    with Client(site.helpdesk_url, accept_timeout=20) as client:
        handle = client.trigger("CCIM32_STARTCYCLE", clients=[site.quiet_id], delivery_wait=1)
    wait_for(
        lambda: (
            site.query("SELECT state FROM storms WHERE storm_id = ?", handle.storm_id)
            == [("done",)]
        ),
        30,
        "the quiet client's storm to finish publishing",
    )
    poll(lambda: site.published() - counted >= 2, "their publish reports")
    ids = [
        str(row[0])
        for row in site.query(
            "SELECT command_id FROM commands WHERE client_id = ? ORDER BY rowid", site.quiet_id
        )
    ]
    assert len(ids) == 2, ids
    return ids, handle.storm_id


def _rows(site: Site, command_ids: list[str]) -> dict[str, tuple[object, ...]]:
    return {
        cid: tuple(
            site.query(
                "SELECT status, acked_at, reason, storm_id, client_id FROM commands "
                "WHERE command_id = ?",
                cid,
            )[0]
        )
        for cid in command_ids
    }


def _storm_counts(site: Site, storm_id: str) -> dict[object, object]:
    rows = site.query(
        "SELECT status, count(*) FROM commands WHERE storm_id = ? GROUP BY status", storm_id
    )
    return dict(rows)
