"""What the service owes for accepted requests survives the process that accepted them."""

from __future__ import annotations

from dispatcher.store.db import DbSettings
from dispatcher.store.owed import Owed, Recipient


def test_owed_storms_and_their_recipients_outlive_the_process(store_db: DbSettings) -> None:
    database = store_db
    first, retry = Recipient("amq.rabbitmq.reply-to.a", "1"), Recipient("amq.gen-x", None)
    with Owed(database) as owed:
        owed.add("storm-b", first, now=2.0)
        owed.add("storm-a", None, now=1.0)  # nobody asked for its summary
        owed.add("storm-b", retry, now=3.0)  # a replay asks for it too
    with Owed(database) as owed:  # the next service
        assert list(owed.storms().items()) == [("storm-a", []), ("storm-b", [first, retry])]
        owed.forget("storm-b")
        assert owed.storms() == {"storm-a": []}
