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
from dispatcher.store.ledger import Ledger
from dispatcher.store.ledger_rows import SentCommand
from dispatcher.storms.progress import STALE_AFTER
from schemas.codec import encode

log = logging.getLogger(__name__)


def resend_fast_lane(broker: Broker, ledger: Ledger, signing: keys.Signing | None = None) -> int:
    """Publish the fast lane's pending commands again; returns how many were confirmed."""
    now = time.time()
    pending = ledger.fast_pending(now, now - STALE_AFTER)
    if not pending:
        return 0
    messages = [_message(SentCommand.of_storm(c, storm, now), now) for c, storm in pending]
    stamp = (signing or keys.Signing.from_env()).stamp()
    with broker.named("setevnt-resend") as resend, resend.publisher(stamp=stamp) as publisher:
        outcomes = publisher.publish(messages)
    sent = sum(1 for outcome in outcomes.values() if outcome is Outcome.SENT)
    log.info("fast lane: re-sent %d of %d unanswered command(s)", sent, len(messages))
    return sent


def _message(command: SentCommand, now: float) -> Outgoing:
    body = encode(command.command())
    # Transient again, and expiring when the command does, not a full TTL from now.
    remaining = command.expires_at - now
    return command_message(command.command_id, command.client_id, body, remaining, persistent=False)
