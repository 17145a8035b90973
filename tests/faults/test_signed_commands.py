"""A real agent obeys only the dispatcher's key: forged and altered commands are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest

from broker import topology
from dispatcher import Dispatcher
from schemas import Command, encode
from schemas.signing import Signer
from tests.integration.helpers import (
    channel,
    collect_acks,
    final,
    queue_depth,
    records,
    signed,
    start_agent,
)

pytestmark = pytest.mark.broker


def _command(command_id: str) -> Command:
    now = time.time()
    return Command(command_id, "PC001", "CCIM32", "STARTCYCLE", False, now, now + 60, "x")


def _publish(url: str, body: bytes, headers: dict[str, str] | None, message_id: str) -> None:
    connection, ch = channel(url)
    try:
        properties = pika.BasicProperties(message_id=message_id, headers=headers, delivery_mode=2)
        ch.basic_publish("", topology.client_queue("PC001"), body, properties)
    finally:
        connection.close()


def test_unsigned_forged_and_tampered_commands_are_refused(amqp_url: str, tmp_path: Path) -> None:
    with Dispatcher(amqp_url) as dispatcher:
        dispatcher.provision(["PC001"])
    agent = start_agent(amqp_url, "PC001", tmp_path)
    try:
        genuine = encode(_command("tampered"))
        altered = genuine.replace(b"CCIM32", b"CCIM33")  # any change to the signed bytes
        _publish(amqp_url, encode(_command("unsigned")), None, "unsigned")
        forged = encode(_command("forged"))
        _publish(amqp_url, forged, Signer.generate().headers(forged), "forged")
        _publish(amqp_url, altered, signed(genuine), "tampered")
        with Dispatcher(amqp_url) as dispatcher:
            good = dispatcher.trigger(["PC001"], "CCIM32_STARTCYCLE")[0]
        acks = collect_acks(amqp_url, lambda a: bool(final(a, good.command_id)), 20)
        refused = {a.command_id: (a.status, a.reason) for a in acks if a.status != "done"}
        assert refused == {
            "unsigned": ("rejected", "bad-signature"),
            "forged": ("rejected", "bad-signature"),
            "tampered": ("rejected", "bad-signature"),
        }
        assert final(acks, good.command_id)[0].status == "done"
        assert queue_depth(amqp_url, topology.DEAD_QUEUE) == 3
        ran = [r["command_id"] for r in records(tmp_path / "PC001.record") if r["phase"] == "start"]
        assert ran == [good.command_id]
    finally:
        agent.terminate()
