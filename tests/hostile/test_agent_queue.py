"""Anything in an agent's queue: a compromised dispatcher path (issue 21, item 3).

Published as the test's guest user (what the dispatcher publishes as) straight into the
enrolled agent's queue: raw bytes and hypothesis msgpack, signed with the test
dispatcher's key (so the agent decodes them) and unsigned, with and without message ids
of the sender's choosing. The agent answers each with a reject ack of its own, which
the collector takes like any ack: neither the agent nor the collector may stop, the
series may not grow with what the bodies name, and those acks may not create ledger
rows. Then the genuine command and request must complete.

A valid signed command that waits for a far ``not_before`` is left out of the
hypothesis bodies: the dispatcher may send one, and it is tested the way a requester
gets one sent, as a request's ``spread`` (test_service_requests.py).

Reproduce, with the figures tables (also written under the base temp directory):

    CI=true .venv/bin/python -m pytest tests/hostile/test_agent_queue.py -rP \\
        --basetemp /tmp/hostile
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator

import pytest

from schemas.codec import encode
from schemas.messages import Command
from tests.hostile.batch import Batch, conclude, judge
from tests.hostile.site import Publication, Sent, Site
from tests.hostile.wire import big_bodies, draw, hostile_values, new_id, pack, raw_bodies, shaped
from tests.integration.helpers import signed

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

SHAPED = 100
VALUES = 40
RAW = 40
FOREIGN = 150  # forged commands per signing
# Message ids a sender may choose: the agent names some of them in its reject acks.
MESSAGE_IDS = (None, "uuid", "x" * 200, "../../etc/passwd", "PC001\n", "", "ünï")


def _message_ids() -> Iterator[str | None]:
    for chosen in itertools.cycle(MESSAGE_IDS):
        yield new_id() if chosen == "uuid" else chosen


def _into_agent(site: Site, kind: str, bodies: Iterable[bytes], *, sign: bool) -> Sent:
    items = (
        Publication(
            "",
            site.agent_queue,
            body,
            message_id=message_id,
            headers=signed(body) if sign else None,
        )
        for body, message_id in zip(bodies, _message_ids(), strict=False)
    )
    signing = "signed" if sign else "unsigned"
    return site.publish(site.url, "guest (dispatcher path)", f"{signing} {kind}", items)


def test_hypothesis_bodies_signed_and_unsigned(site: Site, figures: list[Batch]) -> None:
    shapes = draw(shaped(client_id=site.client_id, keep=frozenset({"not_before"})), SHAPED)
    values = draw(hostile_values().map(pack), VALUES)
    raw = draw(raw_bodies(), RAW)
    before = site.snapshot()
    sent = [
        _into_agent(site, kind, bodies, sign=sign)
        for sign in (True, False)
        for kind, bodies in (
            ("broken messages of every type", shapes),
            ("hypothesis msgpack values", values),
            ("near-msgpack bytes", raw),
            ("1 MiB bodies", big_bodies(2)),
        )
    ]
    conclude(figures, judge(site, "agent queue: hypothesis", before, sent))


def test_forged_commands_naming_components_outside_the_catalog(
    site: Site, figures: list[Batch]
) -> None:
    """Well-formed commands but for the names: the agent refuses them, and says which
    names it refused in its ack; the collector must not make labels of them."""

    def forged(offset: int) -> Iterator[bytes]:
        now = time.time()
        for n in range(offset, offset + FOREIGN):
            yield encode(
                Command(
                    command_id=new_id(),
                    client_id=site.client_id,
                    component=f"ZZ{n:05d}" if n % 2 else "CQMGR32",
                    event="STARTCYCLE" if n % 2 else f"EV{n:05d}",
                    silent=False,
                    issued_at=now,
                    expires_at=now + 600,
                    requested_by="hostile",
                    storm_id=f"storm-hostile-{n:05d}",
                )
            )

    before = site.snapshot()
    kind = "commands naming components/events outside the catalog"
    sent = [
        _into_agent(site, kind, forged(0), sign=True),
        _into_agent(site, kind, forged(FOREIGN), sign=False),
    ]
    conclude(figures, judge(site, "agent queue: names outside the catalog", before, sent))
