"""A request whose commands start an hour later (issue 21, item 2: spread near ttl).

Within the schema and the site's policy, a service asks for a client's commands spread
over just under their ttl: each starts at a point of the spread its storm and client
decide, up to an hour later. Whatever the dispatcher and the agent do with such a
command, they may not hold everything else for that hour: the genuine command and a
genuine request (another service user's) must still complete, the consumers keep
consuming, the ledger grows by what was accepted.

A module of its own: what such a command holds stays held for the rest of the module,
and would hide what the other requests of test_service_requests.py hold.

Reproduce, with the figures tables (also written under the base temp directory):

    CI=true .venv/bin/python -m pytest tests/hostile/test_service_spread.py -rP \\
        --basetemp /tmp/hostile
"""

from __future__ import annotations

import pytest

from schemas.codec import encode
from schemas.messages import TriggerRequest
from tests.hostile.batch import Batch, conclude, judge
from tests.hostile.requester import Requests
from tests.hostile.site import Site

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

REPLY_WAIT = 15.0
# Neither the genuine command's event nor the genuine request's (the genuine traffic must
# not be coalesced into a held command), and three of them: each start is at a random
# point of the spread, and at least one of three is all but sure to be minutes away.
EVENTS = ("CLISVCL_STARTCYCLE", "SMSMON32_STARTCYCLE", "CCIM32_STARTCYCLE")


def test_commands_spread_over_their_ttl(
    site: Site, service: Requests, figures: list[Batch]
) -> None:
    bodies = [
        encode(TriggerRequest(event=event, clients=(site.client_id,), ttl=3600.0, spread=3599.999))
        for event in EVENTS
    ]
    before = site.snapshot()
    sent, answered = service.send("requests with spread just under ttl", bodies)

    batch = judge(
        site,
        "service: spread near ttl",
        before,
        [sent],
        accepted=lambda: service.accepted(answered, REPLY_WAIT),
        checks=lambda: service.unanswered(answered),
        notes=lambda: [
            "replies: " + ", ".join(f"{k} {n}" for k, n in service.outcomes(answered).items())
        ],
    )
    conclude(figures, batch)
