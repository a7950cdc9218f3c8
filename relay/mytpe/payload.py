"""Parse a verified MyTPE body without re-serialising it.

The exact bytes of `data` are kept: `5000.00`, `\\/` and `\\u00e9` reach Kafka as MyTPE sent them. A
body without escapes whose top-level names each occur once is parsed by orjson and its `data` found
by a substring search (`_plain`); any other body is walked member by member with the standard
library's C scanner (`_exact`). Both give the same result wherever the first answers (tests/mytpe/test_payload.py),
nesting included: a body nested past DEPTH is refused before either runs.
"""

from __future__ import annotations

import itertools
import json
import json.decoder
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from relay.mytpe.signatures import DELIVERY_ID_VALUE

# The C string scanner behind json.loads; typeshed does not declare it.
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = frozenset(" \t\n\r")
_WS_BYTES = b" \t\n\r"
_EVENT = re.compile(r"[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){1,4}")


class Unusable(Exception):
    """A verified body that cannot be routed; it goes to the DLQ with `reason`.

    Reasons: `invalid_utf8`, `malformed_json` (not JSON: an empty body, or a byte order mark before it, included;
    so is a lone UTF-16 surrogate escape in a value the CloudEvent or the record's key carries: no UTF-8 can hold
    it), `not_an_object` (JSON of another kind), `missing_event`, `missing_data`,
    `malformed_delivery_id` (the body's own, not 1-200 visible ASCII characters as the header's must be: it
    becomes the CloudEvent's id, the dedupe key and a log field), `unroutable_event`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = ""
        """The delivery's own dedupe key when the body was read that far (its signed id, or its digest): set by
        the pipeline, so that its quarantine claims that key; else "" (the quarantine's own key then)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    delivery_id: str
    event: str
    data: dict[str, Any]
    data_bytes: bytes
    timestamp: str | None
    id_in_body: bool = True
    """Whether `delivery_id` is the body's (covered by the signature), not the header's."""

    @property
    def family(self) -> str:
        return self.event.split(".", 1)[0]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _integer(text: str) -> int | float:
    """An integer as orjson reads it: past 64 bits (below -2**63, above 2**64 - 1), a float. The two parses then
    agree whichever one a body takes (a backslash anywhere decides), and so does a record's key."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


# Stateless, like the compiled patterns above: built once instead of on every request.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_integer)


def _skip(text: str, index: int) -> int:
    if text[index : index + 1] not in _WS_CHARS:  # compact JSON, as MyTPE sends: no regex call
        return index
    match = _WS.match(text, index)
    return match.end() if match else index


def members(text: str) -> dict[str, tuple[Any, int, int]]:
    """Top-level members of a JSON object text: key -> (value, start, end) character offsets."""
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        _DECODER.decode(text)  # not JSON at all (empty, a byte order mark, text) raises: `malformed_json`
        raise Unusable("not_an_object")  # JSON, of another kind
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


DEPTH = 512
"""The deepest nesting a body may have, in both parses: orjson (`_plain`) takes 1,024 levels, and the standard
library's scanner (`_exact`, and consumers' Python) about 990 less the caller's stack, so the same data was
published without a backslash and quarantined with one. MyTPE's bodies nest a few levels; the CloudEvent adds
one, which every consumer's Python parser reads."""
# A JSON string, its escapes included (unrolled: no alternation), to its closing quote or to the body's end: an
# unterminated one matched nowhere, and was tried again from each later quote to the end (quadratic).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
_BRACKETS = bytes.maketrans(b"{[}]", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"{[}]"))


def _deepest(body: bytes) -> int:
    """How deep `body`'s brackets nest outside its strings; asked only of a body with more than DEPTH of them.
    C loops all (a regular expression that moves forward at every match, a translation, iterators): linear in
    the body, never the event loop's Python per byte. A body that is not JSON gives some number: its parse
    refuses it anyway."""
    shape = _STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)  # each opening 2, each closing 0
    return max(map(operator.sub, itertools.accumulate(shape), itertools.count(1)), default=0)


def parse(body: bytes, header_delivery_id: str) -> Webhook:
    """Parse a verified body. Raises Unusable with a bounded reason code.

    The body's `delivery_id` (covered by the signature) wins over the header's (which is not).
    """
    if body.count(b"{") + body.count(b"[") > DEPTH and _deepest(body) > DEPTH:
        raise Unusable("malformed_json")
    found = _plain(body)
    document, data_bytes = found if found is not None else _exact(body)
    event = document.get("event")
    if not isinstance(event, str) or _EVENT.fullmatch(event) is None:
        raise Unusable("missing_event")
    data = document.get("data")
    if not isinstance(data, dict):
        raise Unusable("missing_data")
    found_id = document.get("delivery_id")
    id_in_body = isinstance(found_id, str) and found_id != ""
    delivery_id = found_id if isinstance(found_id, str) and found_id else header_delivery_id
    if id_in_body and DELIVERY_ID_VALUE.fullmatch(delivery_id) is None:
        raise Unusable("malformed_delivery_id")
    timestamp = document.get("timestamp")
    return Webhook(
        delivery_id=delivery_id,
        event=event,
        data=data,
        data_bytes=data_bytes,
        timestamp=timestamp if isinstance(timestamp, str) else None,
        id_in_body=id_in_body,
    )


def _exact(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The top-level members and the bytes of `data`, by walking the members one by one (any JSON)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unusable("invalid_utf8") from None
    try:
        found = members(text)
    except (ValueError, RecursionError):
        raise Unusable("malformed_json") from None
    _, start, end = found.get("data", (None, 0, 0))
    return {name: value for name, (value, _, _) in found.items()}, text[start:end].encode("utf-8")


_OVERLAPPING = " \t\n\r,:]}"
"""What a top-level name that may overlap itself in a body without backslashes starts with (an empty name too, as
`"" in` any text). Such a name holds no `"`, so two of its occurrences `"name"` can share only one quote; that quote
is a string's closing one (an opening one has a closing one just before the name), so the name's first character
follows a closing quote: JSON white space, `,`, `:`, `]` or `}`."""
PLAIN_NAMES = 32
"""The most top-level names `_plain` takes (MyTPE's bodies have a handful): it scans the body once per name, so
24,000 names in a 256 KiB body took 4 s of the event loop; `_exact`, one pass, took 0.03 s."""


def _plain(body: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The same as `_exact`, about twice as fast, for a body where a substring search is provably exact.

    It is when the body has no backslash (so every member name is written as it reads) and each
    top-level name occurs once in the whole body (so no member is duplicated, and the one place of a
    name is its member's). orjson parses and validates the whole body; the bytes of `data` run from
    its name to the next top-level name in document order (orjson keeps it), or to the closing brace.
    None otherwise: `_exact` then decides, with its reasons.

    `bytes.count` counts occurrences that do not overlap: two keys never do, so it finds every duplicated
    member, but the one name searched for besides `data` (the next, where `data` ends) must not overlap
    itself either, or its first occurrence may not be its key: such a name is left to `_exact`
    (`_OVERLAPPING`). Until 2026-12-06 a name such as `"},"`, found across the end of `data` and at its own
    key, counted once, and `data` was cut short.
    """
    if b"\\" in body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict or "data" not in document or len(document) > PLAIN_NAMES:
        return None
    names = [b'"' + name.encode() + b'"' for name in document]
    if any(body.count(name) != 1 for name in names):
        return None
    order = list(document)
    at = order.index("data")
    if at + 1 < len(order) and order[at + 1][:1] in _OVERLAPPING:  # the one name besides `data` searched for
        return None
    start = _after_colon(body, body.index(names[at]) + len(names[at]))
    # Only white space and a comma, or the closing brace, stand between the value and what follows it.
    end = body.rindex(b",", start, body.index(names[at + 1])) if at + 1 < len(order) else body.rindex(b"}")
    return document, body[start:end].rstrip(_WS_BYTES)


def _after_colon(body: bytes, index: int) -> int:
    """The index of a member's value, given the index just past its name."""
    index = len(body) - len(body[index:].lstrip(_WS_BYTES))
    return len(body) - len(body[index + 1 :].lstrip(_WS_BYTES))
