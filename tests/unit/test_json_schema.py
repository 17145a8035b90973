"""The committed JSON Schemas are what the message definitions imply, byte for byte.

``python -m schemas.json_schema`` rewrites them after a change to ``schemas/messages.py``.
"""

from __future__ import annotations

import json

import pytest

from schemas.json_schema import SCHEMA_DIR, message_schema, render
from schemas.messages import MESSAGE_TYPES, Message


@pytest.mark.parametrize("cls", MESSAGE_TYPES.values(), ids=list(MESSAGE_TYPES))
def test_committed_schema_is_generated(cls: type[Message]) -> None:
    committed = (SCHEMA_DIR / f"{cls.WIRE_TYPE}.schema.json").read_text()
    assert render(message_schema(cls, json.loads(committed))) == committed, (
        "run: python -m schemas.json_schema"
    )
