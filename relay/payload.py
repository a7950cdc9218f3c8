"""Parse a verified MyTPE body without re-serialising it.

The top-level object is walked member by member with the standard library's C scanner, so the
exact bytes of `data` are kept: `5000.00`, `\\/` and `\\u00e9` reach Kafka as MyTPE sent them.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The C string scanner behind json.loads; typeshed does not declare it.
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = frozenset(" \t\n\r")
_EVENT = re.compile(r"[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){1,4}")


class Unusable(Exception):
    """A verified body that cannot be routed; it goes to the DLQ with `reason`.

    Reasons: `invalid_utf8`, `malformed_json`, `not_an_object`, `missing_event`, `missing_data`,
    `unroutable_event`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Webhook:
    delivery_id: str
    event: str
    data: dict[str, Any]
    data_bytes: bytes
    timestamp: str | None

    @property
    def family(self) -> str:
        return self.event.split(".", 1)[0]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Stateless, like the compiled patterns above: built once instead of on every request.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _skip(text: str, index: int) -> int:
    if text[index : index + 1] not in _WS_CHARS:  # compact JSON, as MyTPE sends: no regex call
        return index
    match = _WS.match(text, index)
    return match.end() if match else index


def members(text: str) -> dict[str, tuple[Any, int, int]]:
    """Top-level members of a JSON object text: key -> (value, start, end) character offsets."""
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        raise Unusable("not_an_object")
    index = _skip(text, index + 1)
    result: dict[str, tuple[Any, int, int]] = {}
    separator = "}" if text[index : index + 1] == "}" else ","
    if separator == "}":
        index = _skip(text, index + 1)
    while separator == ",":
        if text[index : index + 1] != '"':
            raise ValueError("expected a member name")
        key, index = scanstring(text, index + 1)
        index = _skip(text, index)
        if text[index : index + 1] != ":":
            raise ValueError("expected ':'")
        start = _skip(text, index + 1)
        value, end = _DECODER.raw_decode(text, start)
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = (value, start, end)
        index = _skip(text, end)
        separator = text[index : index + 1]
        if separator not in {",", "}"}:
            raise ValueError("expected ',' or '}'")
        index = _skip(text, index + 1)
    if index != len(text):
        raise ValueError("trailing data after the object")
    return result


def parse(body: bytes, header_delivery_id: str) -> Webhook:
    """Parse a verified body. Raises Unusable with a bounded reason code.

    The body's `delivery_id` (covered by the signature) wins over the header's (which is not).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unusable("invalid_utf8") from None
    try:
        found = members(text)
    except (ValueError, RecursionError):
        raise Unusable("malformed_json") from None
    event = found.get("event", (None, 0, 0))[0]
    if not isinstance(event, str) or _EVENT.fullmatch(event) is None:
        raise Unusable("missing_event")
    data, start, end = found.get("data", (None, 0, 0))
    if not isinstance(data, dict):
        raise Unusable("missing_data")
    delivery_id = found.get("delivery_id", (None, 0, 0))[0]
    timestamp = found.get("timestamp", (None, 0, 0))[0]
    return Webhook(
        delivery_id=delivery_id if isinstance(delivery_id, str) and delivery_id else header_delivery_id,
        event=event,
        data=data,
        data_bytes=text[start:end].encode("utf-8"),
        timestamp=timestamp if isinstance(timestamp, str) else None,
    )
