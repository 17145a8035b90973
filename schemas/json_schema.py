"""The JSON Schemas in ``schemas/json/`` as the message definitions imply them.

Every rule a message field's wire rule (its :class:`~schemas.messages.Spec`) states
(type, length, pattern, choices, ranges, which fields are required, which are known at
each minor) is derived here, so the schemas cannot drift from the codec. What a spec
cannot say stays in the committed schema and is carried over as it is: the prose (titles
and descriptions) and the rules that span fields (``allOf``, ``anyOf``, ``$defs``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message
from schemas.rules import (
    ID_PATTERN,
    LATEST_TIME,
    NAME_PATTERN,
    STATUS_PATTERN,
    Spec,
    field_specs,
    needed_fields,
)

SCHEMA_DIR = Path(__file__).resolve().parent / "json"

INT_RANGE = {"minimum": -(2**31), "maximum": 2**31 - 1}
_ID = {"type": "string", "maxLength": 64, "pattern": ID_PATTERN.pattern}
_TYPES = {"str": "string", "bool": "boolean", "time": "number", "seconds": "number"}
_TYPES |= {"int": "integer", "strs": "array", "counts": "array"}
_TYPES |= {"strmap": "object", "idmap": "object", "tally": "object"}


def field_schema(spec: Spec) -> dict[str, Any]:
    """The JSON Schema of one field, but for its description."""
    kind = _TYPES[spec.kind]
    schema: dict[str, Any] = {"type": kind if spec.required else [kind, "null"]}
    if spec.choices:
        schema["enum"] = [*spec.choices, *([] if spec.required else [None])]
    elif spec.kind == "str":
        schema["maxLength"] = spec.max_len
    if spec.pattern is not None:
        schema["pattern"] = spec.pattern.pattern
    if spec.kind in ("time", "seconds"):
        schema["minimum"] = 0
        if spec.kind == "time":
            schema["maximum"] = int(LATEST_TIME)
    if spec.kind in _COLLECTIONS:
        schema.update(_COLLECTIONS[spec.kind](spec))
    return schema


_COLLECTIONS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "int": lambda spec: dict(INT_RANGE),
    "strs": lambda spec: {"maxItems": spec.max_items, "items": dict(_ID)},
    "counts": lambda spec: {"maxItems": 256, "items": {"$ref": "#/$defs/count"}},
    "strmap": lambda spec: {
        "maxProperties": 64,
        "propertyNames": {"maxLength": 32, "pattern": NAME_PATTERN.pattern},
        "additionalProperties": {"type": "string", "maxLength": 64},
    },
    "idmap": lambda spec: {
        "maxProperties": spec.max_items,
        "propertyNames": {"maxLength": 64, "pattern": ID_PATTERN.pattern},
        "additionalProperties": dict(_ID),
    },
    "tally": lambda spec: {
        "maxProperties": 32,
        "propertyNames": {"maxLength": 32, "pattern": STATUS_PATTERN.pattern},
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    },
}

# Rules TriggerRequest.__post_init__ adds to single fields (zero or negative is refused).
_MESSAGE_RULES: dict[tuple[str, str], dict[str, Any]] = {
    ("trigger-request", "ttl"): {"exclusiveMinimum": 0},
    ("trigger-request", "rate"): {"exclusiveMinimum": 0},
    ("trigger-request", "delivery_wait"): {"exclusiveMinimum": 0},
    ("trigger-request", "max_errors"): {"minimum": 0},
}


def message_schema(cls: type[Message], committed: dict[str, Any]) -> dict[str, Any]:
    """The schema of ``cls``: derived from its fields' wire rules, with ``committed``'s prose."""
    schema = dict(committed)
    schema["required"] = ["t", "v", *needed_fields(cls)]
    old = committed["properties"]
    properties = {
        "t": {"description": old["t"]["description"], "const": cls.WIRE_TYPE},
        "v": _version(old["v"]),
    }
    for name, spec in field_specs(cls).items():
        rules = field_schema(spec) | _MESSAGE_RULES.get((cls.WIRE_TYPE, name), {})
        properties[name] = {"description": old[name]["description"], **rules}
    schema["properties"] = properties
    schema["$comment"] = (
        f"Unknown fields: rejected at minor {SCHEMA_VERSION[1]} (this version), "
        "ignored at a newer minor."
    )
    minor = {"const": SCHEMA_VERSION[1]}
    schema["if"] = {"properties": {"v": {"prefixItems": [True, minor]}}}
    schema["then"] = {"propertyNames": {"enum": list(properties)}}
    return schema


def _version(committed: dict[str, Any]) -> dict[str, Any]:
    major, minor = committed["prefixItems"]
    return {
        **committed,
        "prefixItems": [
            {**major, "type": "integer", "const": SCHEMA_VERSION[0]},
            {**minor, "type": "integer", "minimum": 0},
        ],
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Rewrite ``schemas/json/`` from the message definitions."""
    for wire_type, cls in MESSAGE_TYPES.items():
        path = SCHEMA_DIR / f"{wire_type}.schema.json"
        path.write_text(render(message_schema(cls, json.loads(path.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
