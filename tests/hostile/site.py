"""A site under attack: one vhost, ``serve``, an enrolled agent, two service users.

:func:`hostile_site` starts everything as an operator would (``setevnt-dispatcher serve
--policy``, ``setevnt-agent run`` with the client's own broker user and the test signing
key) and stops it all, broker users included (they are broker-wide), whatever fails.
One service user attacks; the other, with the same rule, makes the genuine requests.
:class:`Site` publishes as each peer (:meth:`Site.publish`), runs the genuine traffic
that must still work after a batch (:meth:`Site.genuine`) and takes the
:class:`~tests.hostile.observe.Snapshot` a batch is judged by.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from broker import topology
from broker.management import Management
from broker.settings import BrokerSettings
from dispatcher import Client, Dispatcher, RequestRefused
from dispatcher.access.enroll import enroll
from dispatcher.access.services import enroll_service
from dispatcher.api.client import RequestTimeout
from dispatcher.store.ledger_rows import ACK_FINAL
from tests.conftest import BROKER_HOST, management
from tests.hostile.observe import Allowance, Snapshot, ledger_rows, read_series, rss_kb
from tests.integration.fleet import Fleet
from tests.integration.helpers import Process, start_agent, wait_for

GENUINE_EVENT = "CQMGR32_STARTCYCLE"
# Another event for the genuine request: one pending for the client already (the genuine
# command, stuck) would answer it "coalesced" without a storm ever running.
REQUEST_EVENT = "SMSAPM32_STARTCYCLE"
REQUEST_DONE = "done (done 1)"
COMMAND_WAIT = 30  # setevnt --wait
SUMMARY_WAIT = 30.0  # for a genuine request's completion summary
BARRIER_WAIT = 20.0

# The attacking service and the genuine one have the same rule: whatever one requester
# does, another's requests still go through.
RULE = """
[users.{name}]
events = ["*_STARTCYCLE"]
targets = ["client", "group", "all"]
max_targets = 1000
"""


@dataclass(frozen=True, slots=True)
class Publication:
    exchange: str
    routing_key: str
    body: bytes
    user_id: str | None = None
    message_id: str | None = None
    headers: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """One kind of message of one batch: how many the broker confirmed or refused."""

    sender: str
    kind: str
    sent: int
    confirmed: int
    refused: int


@dataclass(frozen=True, slots=True)
class Genuine:
    """What became of the genuine command and request after a batch."""

    command: str  # "done" when it worked
    request: str  # the summary's state and counts: REQUEST_DONE when it worked
    command_id: str | None
    added: Allowance  # the ledger rows and published counts they account for

    @property
    def worked(self) -> bool:
        return self.command == "done" and self.request == REQUEST_DONE


@dataclass(frozen=True, slots=True)
class Peers:
    """Who is who on the site: broker users and the clients."""

    client_id: str  # enrolled, runs the agent
    client_url: str
    quiet_id: str  # provisioned, runs no agent
    service: str  # the service user that attacks
    service_url: str
    helpdesk_url: str  # a service user that only makes the genuine requests


class Site:
    def __init__(self, fleet: Fleet, serve: Process, agent: Process, peers: Peers) -> None:
        self.fleet = fleet
        self.url = fleet.url  # guest: the dispatcher's and a compromised dispatcher's path
        self.serve = serve
        self.agent = agent
        self.client_id = peers.client_id
        self.client_url = peers.client_url
        self.quiet_id = peers.quiet_id
        self.service = peers.service
        self.service_url = peers.service_url
        self.helpdesk_url = peers.helpdesk_url
        port = re.search(r"metrics on http://[\d.]+:(\d+)/", serve.output)
        assert port, serve.output
        self.metrics_url = f"http://127.0.0.1:{port.group(1)}/metrics"

    @property
    def agent_queue(self) -> str:
        return topology.client_queue(self.client_id)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, url: str, sender: str, kind: str, items: Iterable[Publication]) -> Sent:
        """Publish with confirms as ``url``'s user; a refusal closes only that channel."""
        connection = pika.BlockingConnection(pika.URLParameters(url))
        sent = confirmed = refused = 0
        try:
            channel = _confirming(connection)
            for item in items:
                sent += 1
                properties = pika.BasicProperties(
                    user_id=item.user_id,
                    message_id=item.message_id,
                    headers=item.headers,
                    delivery_mode=2,
                )
                try:
                    channel.basic_publish(item.exchange, item.routing_key, item.body, properties)
                    confirmed += 1
                except pika.exceptions.NackError:
                    refused += 1
                except pika.exceptions.ChannelClosedByBroker:
                    refused += 1
                    channel = _confirming(connection)
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
        return Sent(sender, kind, sent, confirmed, refused)

    # -- what must still work -----------------------------------------------------------

    def genuine(self) -> Genuine:
        """The genuine command (``setevnt --wait``), then a genuine request; what they add."""
        counted = self.published()
        command, command_id = self._genuine_command()
        self._barrier(command_id if command == "done" else None)
        request, added = self._genuine_request()
        if command_id is not None:  # setevnt's own row, and its publish report
            added += Allowance(commands=1, published=1)
        genuine = Genuine(command, request, command_id, added)
        if genuine.worked:
            # The publish reports reach the collector after the answers: wait for them
            # here, or they would be counted in the next batch.
            with contextlib.suppress(AssertionError):
                poll(lambda: self.published() - counted >= added.published, "the reports")
        return genuine

    def _genuine_command(self) -> tuple[str, str | None]:
        done = self.fleet.setevnt(
            "--client",
            self.client_id,
            GENUINE_EVENT,
            "--wait",
            str(COMMAND_WAIT),
            "--json",
            timeout=COMMAND_WAIT + 60,
        )
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if not rows:
            return f"exit {done.returncode}: {done.stderr.strip()[-300:]}", None
        row = rows[-1]
        outcome = str(row["status"])
        if outcome != "done" and row.get("detail"):
            outcome += f" ({row['detail']})"
        return outcome, str(row["command_id"])

    def _barrier(self, command_id: str | None) -> None:
        """Wait until the collector recorded the genuine ack: it queued behind the batch's
        messages on ``setevnt.acks``, so everything before it has been handled. Without
        one (the command failed), until nothing is left ready on the collector's queues."""

        def done() -> bool:
            if command_id is not None:
                return self.command_status(command_id) in ACK_FINAL
            return self.ready(topology.ACK_QUEUE, topology.FLEET_QUEUE) == 0

        with contextlib.suppress(AssertionError):
            wait_for(done, BARRIER_WAIT, "the collector to take the batch")

    def _genuine_request(self) -> tuple[str, Allowance]:
        try:
            with Client(self.helpdesk_url, accept_timeout=20) as client:
                handle = client.trigger(REQUEST_EVENT, clients=[self.client_id], delivery_wait=5)
                added = Allowance(handle.targets, 0 if handle.replayed else 1, handle.targets)
                try:
                    summary = handle.wait(timeout=SUMMARY_WAIT)
                except RequestTimeout:
                    return f"accepted, no summary within {SUMMARY_WAIT:g} s", added
        except RequestRefused as refused:
            return f"refused: {refused.reason} {refused.detail[:120]}", Allowance()
        except RequestTimeout:
            return "no reply within 20 s", Allowance()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
        return f"{summary.state} ({counts})", added

    # -- looking ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        series, published = read_series(self.metrics_url)
        commands, storms = ledger_rows(self.fleet.db)
        processes = {"serve": self.serve, "agent": self.agent}
        return Snapshot(
            consumers=self.consumers(),
            alive={name: p.proc.poll() is None for name, p in processes.items()},
            series=series,
            commands=commands,
            storms=storms,
            published=published,
            rss_kb={name: rss_kb(p.proc.pid) for name, p in processes.items()},
        )

    def published(self) -> float:
        """Commands counted published so far (setevnt_commands_published_total)."""
        return read_series(self.metrics_url)[1]

    def consumers(self) -> dict[str, int]:
        """Consumers per queue, from the broker itself: the management API's counts lag
        by its statistics interval, long enough to show a dead consumer alive."""
        queues = (topology.ACK_QUEUE, topology.FLEET_QUEUE, topology.REQUEST_QUEUE)
        counts = {}
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            for queue in (*queues, self.agent_queue):
                channel = connection.channel()
                try:
                    declared = channel.queue_declare(queue, passive=True)
                    counts[queue] = int(declared.method.consumer_count)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    counts[queue] = -1
        finally:
            connection.close()
        return counts

    def ready(self, *queues: str) -> int:
        """Messages ready (not yet delivered) in ``queues``."""
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            return sum(
                int(channel.queue_declare(q, passive=True).method.message_count) for q in queues
            )
        finally:
            connection.close()

    def command_status(self, command_id: str) -> str | None:
        with sqlite3.connect(f"file:{self.fleet.db}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute(
                "SELECT status FROM commands WHERE command_id = ?", (command_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(f"file:{self.fleet.db}?mode=ro", uri=True, timeout=10) as db:
            return list(db.execute(sql, args).fetchall())

    def why_stuck(self) -> list[str]:
        """What holds the genuine traffic up: storms still running, the agent's backlog."""
        running = self.query(
            "SELECT count(*), sum(targets), options FROM storms WHERE state = 'running' "
            "GROUP BY options"
        )
        found = [f"{n} storm(s) still running ({t} targets) with {o}" for n, t, o in running]
        count, latest = self.query(
            "SELECT count(*), max(not_before) FROM commands WHERE client_id = ? "
            "AND status IN ('sent', 'deferred', 'pending-offline')",
            self.client_id,
        )[0]
        if count:
            found.append(f"{count} command(s) sent to {self.client_id} unanswered")
        if isinstance(latest, float) and latest > time.time():
            found.append(
                f"one of them may start only {latest - time.time():.0f} s from now "
                "(not_before), and the agent takes one command at a time"
            )
        found.append(f"the agent's last line: {self.agent.lines[-1] if self.agent.lines else ''}")
        return found


def poll(predicate: Callable[[], object], what: str, timeout: float = BARRIER_WAIT) -> None:
    """Like ``wait_for``, for a predicate that scrapes /metrics: every half second."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def _confirming(connection: pika.BlockingConnection) -> Any:
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


# -- starting and stopping --------------------------------------------------------------


@contextlib.contextmanager
def hostile_site(tmp: Path) -> Iterator[Site]:
    """A private vhost with everything running; all of it removed on the way out."""
    vhost = f"setevnt-test-hostile-{uuid.uuid4().hex[:8]}"
    quoted = urllib.parse.quote(vhost, safe="")
    url = f"amqp://guest:guest@{BROKER_HOST}:5672/{quoted}"
    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    client_id, quiet_id = f"{prefix}-PC", f"{prefix}-QUIET"
    service, helpdesk = f"{prefix}-svc", f"{prefix}-helpdesk"
    management("PUT", f"/vhosts/{quoted}")
    settings = BrokerSettings(url=url)
    users = Management.for_broker(settings)
    fleet = Fleet(url, tmp)
    agent: Process | None = None
    try:
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        management("PUT", f"/permissions/{quoted}/guest", perms)
        with Dispatcher(url) as dispatcher:
            dispatcher.provision([client_id, quiet_id])
        enrolled = enroll(settings, users, client_id)
        services = {name: enroll_service(settings, users, name).url for name in (service, helpdesk)}
        policy = tmp / "policy.toml"
        policy.write_text("".join(RULE.format(name=name) for name in services))
        serve = fleet.serve("--policy", str(policy))
        serve.wait_line("taking requests from setevnt.requests")
        agent = start_agent(enrolled.agent_url, client_id, tmp)
        peers = Peers(
            client_id, enrolled.agent_url, quiet_id, service, services[service], services[helpdesk]
        )
        yield Site(fleet, serve, agent, peers)
    finally:
        try:
            if agent is not None:
                # An agent held up inside a command does not stop on SIGTERM (the test
                # that held it up says so): it is killed.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.terminate()
            fleet.stop()  # a service that will not stop fails the teardown, cleaned up
        finally:
            for user in (client_id, service, helpdesk):
                if users.user_exists(user):
                    users.delete_user(user)
            management("DELETE", f"/vhosts/{quoted}")
