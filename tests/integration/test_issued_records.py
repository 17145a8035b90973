"""What a one-off send tells the service (its ``Issued`` records) reaches the ack queue,
or the send fails before any command goes out; refused once the commands went out, the
send fails with their receipts.

A quorum ack queue that lost its leader's node refuses publishes for a while (the cluster
case is in tests/cluster/test_node_kill.py); here a policy makes the ack queue refuse
every publish (``max-length`` 0 with the queue's ``reject-publish``) for as long as a test
wants.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from broker import topology
from broker.errors import BrokerRefused, ConnectionLost
from dispatcher.access import keys
from dispatcher.api import dispatcher as api
from dispatcher.api.dispatcher import Dispatcher, OutcomesUnrecorded
from dispatcher.cli import setevnt
from schemas import cli
from schemas.codec import decode_any
from schemas.messages import Issued, PublishReport
from tests.conftest import management
from tests.integration.helpers import drain

pytestmark = pytest.mark.broker

POLICY = "setevnt-test-refuse-acks"


@contextlib.contextmanager
def refusal(vhost: str, taking: int = 0) -> Iterator[threading.Event]:
    """The ack queue takes ``taking`` more messages, then refuses publishes until the
    event is set (nothing consumes it in these tests)."""
    path = f"/policies/{urllib.parse.quote(vhost, safe='')}/{POLICY}"
    body = {
        "pattern": f"^{topology.ACK_QUEUE}$",
        "apply-to": "queues",
        "priority": 10,
        "definition": {"max-length": taking},
    }
    management("PUT", path, body)
    lifted = threading.Event()
    try:
        yield lifted
    finally:
        if not lifted.is_set():
            management("DELETE", path)


@pytest.fixture
def refusing(vhost: str) -> Iterator[threading.Event]:
    """The ack queue refuses publishes until the event is set."""
    with refusal(vhost) as lifted:
        yield lifted


def lift_after(vhost: str, seconds: float, lifted: threading.Event) -> threading.Timer:
    def lift() -> None:
        management("DELETE", f"/policies/{urllib.parse.quote(vhost, safe='')}/{POLICY}")
        lifted.set()

    timer = threading.Timer(seconds, lift)
    timer.start()
    return timer


def test_records_refused_for_a_while_are_offered_again_until_taken(
    amqp_url: str, vhost: str, refusing: threading.Event
) -> None:
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC1"])
        timer = lift_after(vhost, 1.0, refusing)
        try:
            [receipt] = dispatcher.trigger(["PC1"], "CCIM32_STARTCYCLE")
        finally:
            timer.join()
    assert receipt.sent
    records = [decode_any(body) for _properties, body in drain(amqp_url, topology.ACK_QUEUE)]
    issued = [r for r in records if isinstance(r, Issued)]
    assert [(r.status, r.commands) for r in issued] == [
        ("planned", {receipt.command_id: "PC1"}),
        ("sent", {receipt.command_id: "PC1"}),
    ]
    assert any(isinstance(r, PublishReport) for r in records)


def test_records_refused_throughout_fail_the_send_before_any_command_goes_out(
    amqp_url: str, refusing: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "RECORD_RETRY_FOR", 1.0)
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC1"])
        with pytest.raises(ConnectionLost, match="refused 1 record"):
            dispatcher.trigger(["PC1"], "CCIM32_STARTCYCLE")
    assert drain(amqp_url, topology.client_queue("PC1")) == []


def test_records_with_no_ack_queue_to_reach_fail_the_send_at_once(
    amqp_url: str, vhost: str
) -> None:
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC1"])
        quoted = urllib.parse.quote(vhost, safe="")
        management("DELETE", f"/queues/{quoted}/{topology.ACK_QUEUE}")
        with pytest.raises(BrokerRefused, match="unroutable"):
            dispatcher.trigger(["PC1"], "CCIM32_STARTCYCLE")
    assert drain(amqp_url, topology.client_queue("PC1")) == []


def test_records_refused_after_the_commands_went_out_leave_their_receipts(
    amqp_url: str, vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first record is taken, the commands go out, the record of their outcome is
    refused: the caller gets the receipts, in an error that is not retried."""
    monkeypatch.setattr(api, "RECORD_RETRY_FOR", 1.0)
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC1"])  # PC2 has no queue: unroutable
        with refusal(vhost, taking=1), pytest.raises(OutcomesUnrecorded) as raised:
            dispatcher.trigger(["PC1", "PC2"], "CCIM32_STARTCYCLE")
    assert not isinstance(raised.value, ConnectionLost)
    assert "1 of 2 command(s) went out" in str(raised.value)
    by_client = {r.client_id: r for r in raised.value.receipts}
    assert by_client["PC1"].sent and by_client["PC2"].status == "unroutable"
    [(properties, _body)] = drain(amqp_url, topology.client_queue("PC1"))
    assert properties.message_id == by_client["PC1"].command_id
    records = [decode_any(body) for _properties, body in drain(amqp_url, topology.ACK_QUEUE)]
    assert [(r.status, len(r.commands)) for r in records if isinstance(r, Issued)] == [
        ("planned", 2)
    ]


def test_setevnt_prints_the_receipts_of_commands_whose_outcome_went_unrecorded(
    amqp_url: str,
    vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(api, "RECORD_RETRY_FOR", 1.0)
    with Dispatcher(amqp_url, signing=keys.Signing(None)) as dispatcher:
        dispatcher.declare_topology()
        dispatcher.provision(["PC1"])
    argv = ["--url", amqp_url, "--unsigned", "--json", "--client", "PC1", "CCIM32_STARTCYCLE"]
    with refusal(vhost, taking=1):
        code = setevnt.main(argv)
    out, err = capsys.readouterr()
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["client"], row["status"]) == ("PC1", "sent")
    assert "do not send these commands again" in err and "went out" in err
    assert code == cli.EXIT_BROKER
    [(properties, _body)] = drain(amqp_url, topology.client_queue("PC1"))
    assert properties.message_id == row["command_id"]
