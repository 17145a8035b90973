"""Re-send the fast lane's unanswered commands after the broker may have restarted.

Fast-lane storms publish transient commands: ~10x the enqueue rate, but a broker restart
empties the queues of them. A running storm re-sends its own when its publisher
reconnects; afterwards the dispatcher service does it for every finished (or dead)
storm when its collector reconnects, from the ledger: each command with its id, its
start time and what is left of its time to live. An agent that already ran one answers
from its journal, so a re-send after a mere network blip costs a duplicate delivery,
never a second run.
"""

from __future__ import annotations

import logging
import time

from broker.broker import Broker
from broker.publisher import Outcome, Outgoing
from dispatcher.access import keys
from dispatcher.api.dispatcher import command_message
from dispatcher.store.ledger import CommandRecord, Ledger, StormRecord
from dispatcher.storms.progress import STALE_AFTER
from schemas.codec import encode
from schemas.messages import Command

log = logging.getLogger(__name__)


def resend_fast_lane(broker: Broker, ledger: Ledger, signing: keys.Signing | None = None) -> int:
    """Publish the fast lane's pending commands again; returns how many were confirmed."""
    now = time.time()
    pending = ledger.fast_pending(now, now - STALE_AFTER)
    if not pending:
        return 0
    messages = [_message(command, storm, now) for command, storm in pending]
    stamp = (signing or keys.Signing.from_env()).stamp()
    with broker.named("setevnt-resend") as resend, resend.publisher(stamp=stamp) as publisher:
        outcomes = publisher.publish(messages)
    sent = sum(1 for outcome in outcomes.values() if outcome is Outcome.SENT)
    log.info("fast lane: re-sent %d of %d unanswered command(s)", sent, len(messages))
    return sent


def _message(command: CommandRecord, storm: StormRecord, now: float) -> Outgoing:
    assert command.component and command.event and command.expires_at is not None
    issued = command.issued_at if command.issued_at is not None else now
    body = encode(
        Command(
            command_id=command.command_id,
            client_id=command.client_id,
            component=command.component,
            event=command.event,
            silent=bool(storm.options.get("silent")),
            issued_at=issued,
            expires_at=command.expires_at,
            requested_by=storm.requested_by,
            storm_id=command.storm_id,
            not_before=command.not_before,
            force=bool(storm.options.get("force")),
        )
    )
    # Transient again, and expiring when the command does, not a full TTL from now.
    remaining = command.expires_at - now
    return command_message(command.command_id, command.client_id, body, remaining, persistent=False)
