"""JSON Schemas (draft-07) of what the relay writes: the CloudEvent envelope and each event's `data`.
May import: relay.mytpe (the event names).

They ship with the package so consumers can validate against the exact contract of their version.
Schemas refer to each other by file name (`"$ref": "pay-link.json"`), relative to this folder.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from relay.mytpe.samples import EVENTS

ENVELOPE = "cloudevent.json"
_DATA_BY_FAMILY = {"transaction": "transaction-data.json", "pay_link": "pay-link-data.json"}


def names() -> list[str]:
    """Every schema file in this folder."""
    return sorted(entry.name for entry in resources.files(__name__).iterdir() if entry.name.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
    return schema


def data_schema(event: str) -> str | None:
    """The schema file of `data` for a MyTPE event name, or None when MyTPE documents no shape for it.

    Only the legacy generation's twelve events have a documented payload; the newer generation's
    (`transaction.paid`, `payment_link.*`, ...) are relayed unchanged with `data` only known to be an object.
    """
    return _DATA_BY_FAMILY[event.partition(".")[0]] if event in EVENTS else None
