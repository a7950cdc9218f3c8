"""Hypothesis strategies for MyTPE webhooks written as MyTPE writes them, and for mutations of them.

A drawn `Event` is a valid delivery of either API generation and of every documented event type
(shared/spec/mytpe-webhooks.md §5-7): the entities of `relay.mytpe.samples`, or the new generation's,
with random extra members and unicode text, serialised as PHP's `json_encode` does (`\\/` and `\\u00e9`
by default, literal UTF-8 and `/` with its `UNESCAPED` flags) and amounts as MyTPE writes them (`5000.00`
as a bare number, `"4500.00"` in the new generation). Mutations then break one thing each and say what
the relay must answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from relay.mytpe import samples, signatures
from tests.helpers import OLD_SECRET, SECRET

NOW = 1775745000
LEGACY_EVENTS = samples.EVENTS
EXT_EVENTS = (
    "transaction.paid",
    "payment_link.exhausted",
    "trader.onboarding_changed",
    "identification.approved",
    "identification.rejected",
)
EXT_ROUTES = "payment_link=pay_link,trader=kyc,identification=kyc"
"""The RELAY_ROUTES docs/configuration.md gives for the new generation (the legacy families are routed by default)."""
TOPIC_OF = {"transaction": "transaction", "pay_link": "pay_link", "payment_link": "pay_link", "trader": "kyc"}
TOPIC_OF["identification"] = "kyc"
ENVELOPE = ("delivery_id", "event", "timestamp", "data")


@dataclass(frozen=True)
class Amount:
    """A JSON number written with exactly these digits (`5000.00`), as MyTPE's encoder writes amounts."""

    text: str


@dataclass(frozen=True)
class Style:
    """How PHP's json_encode wrote the body: its default escapes `/` and every non-ASCII character."""

    escape_slashes: bool = True
    escape_unicode: bool = True
    space: str = ""


def write(value: Any, style: Style) -> str:
    """`value` as JSON text in `style`; dict order is member order."""
    if isinstance(value, Amount):
        return value.text
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=style.escape_unicode)
        return text.replace("/", "\\/") if style.escape_slashes else text
    if isinstance(value, dict):
        pairs = (write(k, style) + ":" + style.space + write(v, style) for k, v in value.items())
        return "{" + ("," + style.space).join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ("," + style.space).join(write(v, style) for v in value) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class Event:
    generation: str
    event: str
    delivery_id: str
    document: dict[str, Any]
    style: Style

    @property
    def family(self) -> str:
        return self.event.split(".", 1)[0]

    @property
    def entity_id(self) -> str:
        return str(self.document["data"][self.family]["id"])

    def body(self) -> bytes:
        return write(self.document, self.style).encode()

    def data_bytes(self) -> bytes:
        return write(self.document["data"], self.style).encode()


# Text as MyTPE's users type it: any unicode (no lone surrogates: PHP refuses to encode them), with
# the slashes of URLs and the accents of French names well represented.
texts = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["Soirée Gala", "https://shop.example.dz/orders/42", "Paiement refusé", "دينار", 'a\\b"c']),
)
numbers = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=10**9, places=2).map(lambda d: Amount(f"{d:.2f}")),
)
values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
extra_names = st.text(min_size=1, max_size=10).filter(lambda name: name not in ENVELOPE)


def _amounts(value: Any) -> Any:
    """The samples' amount markers as `Amount`s."""
    if isinstance(value, dict):
        return {k: _amounts(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("\u0000amount:"):
        return Amount(value.removeprefix("\u0000amount:"))
    return value


def _legacy_data(rng: random.Random, event: str) -> dict[str, Any]:
    family, action = event.split(".", 1)
    moment = datetime.fromtimestamp(NOW, UTC)
    data: dict[str, Any]
    if family == "transaction":
        data = {"transaction": samples.transaction(rng, action, moment), "pay_link": samples.pay_link(rng)}
    else:
        data = {"pay_link": samples.pay_link(rng)}
    data["instance"] = {"id": "abc123-def456", "name": "Cabinet Dr. Ahmed"}
    amounts: dict[str, Any] = _amounts(data)
    return amounts


def _ext_data(rng: random.Random, event: str, entity: str) -> dict[str, Any]:
    family, action = event.split(".", 1)
    money = {"amount": f"{rng.choice((1500, 4500, 12000))}.00", "currency": "DZD"}
    shapes: dict[str, dict[str, Any]] = {
        "transaction": {"status": "paid", **money, "metadata": {"order": "42"}},
        "payment_link": {"status": "exhausted", "usage_mode": "limited", "amount_mode": "fixed", **money},
        "trader": {"onboarding_status": rng.choice(("kyc_pending", "kyc_approved", "suspended"))},
        "identification": {"status": "accepted" if action == "approved" else "refused"},
    }
    return {family: {"id": entity, **shapes[family]}}


@st.composite
def events(draw: st.DrawFn) -> Event:
    """A valid MyTPE delivery of either generation, with random extra members."""
    generation = draw(st.sampled_from(["legacy", "ext"]))
    event = draw(st.sampled_from(LEGACY_EVENTS if generation == "legacy" else EXT_EVENTS))
    rng = draw(st.randoms(use_true_random=False))
    delivery_id = str(draw(st.uuids(version=4)))
    data = _legacy_data(rng, event) if generation == "legacy" else _ext_data(rng, event, str(draw(st.uuids())))
    entity = data[event.split(".", 1)[0]]
    entity.update(draw(st.dictionaries(extra_names.filter(lambda n: n != "id"), values, max_size=2)))
    data.update(draw(st.dictionaries(extra_names.filter(lambda n: n not in data), values, max_size=2)))
    document = {"delivery_id": delivery_id, "event": event, "timestamp": "2026-04-09T14:30:00.000000Z", "data": data}
    document.update(draw(st.dictionaries(extra_names, values, max_size=2)))
    style = draw(st.sampled_from([Style(), Style(escape_slashes=False, escape_unicode=False)]))
    return Event(generation, event, delivery_id, document, style)


# --- mutations of a signed body: each says which DLQ reason the relay must give it ---

BAD_EVENT_NAMES = ["", "transaction", "transaction.", ".completed", "transaction completed", "a.b.c.d.e.f", "x" * 65]


def _with(event: Event, name: str, value: Any) -> bytes:
    return write({**event.document, name: value}, event.style).encode()


def _drop(event: Event, name: str) -> bytes:
    document = {k: v for k, v in event.document.items() if k != name}
    return write(document, event.style).encode()


def _truncated(event: Event, draw: st.DrawFn) -> bytes:
    """The body cut between two characters (a cut inside one would be `invalid_utf8`)."""
    body = event.body()
    end = draw(st.integers(1, len(body) - 1))
    while body[end] & 0xC0 == 0x80:
        end -= 1
    return body[:end]


def _invalid_utf8(event: Event, draw: st.DrawFn) -> bytes:
    body = event.body()
    at = body.index(b'"timestamp":"') + len(b'"timestamp":"')
    return body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]


MUTATIONS: dict[str, tuple[str, Callable[[Event, st.DrawFn], bytes]]] = {
    # name: (the DLQ reason the relay must give, or "" for a family topic), how to make the body
    "pretty-printed": ("", lambda e, d: replace(e, style=replace(e.style, space=" ")).body()),
    "unknown family": ("unroutable_event", lambda e, d: _with(e, "event", "refund.created")),
    "bad event name": ("missing_event", lambda e, d: _with(e, "event", d(st.sampled_from(BAD_EVENT_NAMES)))),
    "event not a string": ("missing_event", lambda e, d: _with(e, "event", d(st.sampled_from([None, 42, [e.event]])))),
    "no event": ("missing_event", lambda e, d: _drop(e, "event")),
    "data not an object": ("missing_data", lambda e, d: _with(e, "data", d(st.sampled_from([None, [], "x", 1])))),
    "no data": ("missing_data", lambda e, d: _drop(e, "data")),
    "duplicate member": ("malformed_json", lambda e, d: e.body()[:-1] + b',"event":"transaction.completed"}'),
    "truncated": ("malformed_json", _truncated),
    "trailing bytes": ("malformed_json", lambda e, d: e.body() + b"x"),
    "NaN": ("malformed_json", lambda e, d: e.body()[:-1] + b',"x":NaN}'),
    "invalid UTF-8": ("invalid_utf8", _invalid_utf8),
    "array": ("not_an_object", lambda e, d: b"[" + e.body() + b"]"),
}


@dataclass(frozen=True)
class Signed:
    """A correctly signed body: as MyTPE sent it, or mutated; `reason` is the DLQ reason it must get."""

    event: Event
    mutation: str
    body: bytes
    reason: str
    """"" for a body the relay must publish on its family topic."""


@st.composite
def signed_bodies(draw: st.DrawFn) -> Signed:
    """Half as MyTPE sends them, half with one mutation (each with the answer it must get)."""
    event = draw(events())
    if draw(st.booleans()):
        return Signed(event, "as sent", event.body(), "")
    name = draw(st.sampled_from(list(MUTATIONS)))
    reason, mutate = MUTATIONS[name]
    return Signed(event, name, mutate(event, draw), reason)


# --- signed requests, then one thing changed: each says what the verifier must decide ---

OTHER_SECRET = "whsec_" + "5a" * 24
garbage = st.one_of(
    st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=120),
    st.from_regex(r"sha256=[0-9a-fA-F]{60,68}", fullmatch=True),
    st.from_regex(r"[0-9 ]{0,14}", fullmatch=True),
)


@dataclass(frozen=True)
class Request:
    """The three MyTPE headers and a body; `verdict` is what the verifier must decide for them.

    `verdict`: `verified` (by `secret`), a SignatureError or HeaderError reason, or "" when any
    refusal is right (random header values)."""

    mutation: str
    signature: str
    timestamp: str
    delivery_id: str
    body: bytes
    verdict: str
    secret: str = ""
    left_out: frozenset[str] = frozenset()
    """The headers not sent."""

    def headers(self) -> list[tuple[str, str]]:
        values = (
            (signatures.SIGNATURE, self.signature),
            (signatures.TIMESTAMP, self.timestamp),
            (signatures.DELIVERY_ID, self.delivery_id),
        )
        return [(name, value) for name, value in values if name not in self.left_out]


def _flip(text: str, at: int) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def _changed(body: bytes, draw: st.DrawFn) -> bytes:
    at = draw(st.integers(0, len(body) - 1))
    return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]


def _reserialised(body: bytes) -> bytes:
    """What a proxy that re-encodes JSON sends: 5000.00 -> 5000.0, \\/ -> /, ", " between members."""
    try:
        again = json.dumps(json.loads(body)).encode()
    except (ValueError, RecursionError):
        again = body
    return again if again != body else body + b"\n"


Change = Callable[[Request, st.DrawFn], Request]
SIGNED_AS_SENT: dict[str, Change] = {
    "as sent": lambda r, d: r,
    "upper-case hex": lambda r, d: replace(r, signature="sha256=" + r.signature[7:].upper()),
    "blanks around the values": lambda r, d: replace(r, signature=f" {r.signature}\t", timestamp=f"\t{r.timestamp} "),
    "signed with a zero-padded timestamp": lambda r, d: _resigned(r, "0" + r.timestamp, r.secret),
    "signed with the previous secret": lambda r, d: _resigned(r, r.timestamp, OLD_SECRET),
}
FORGED: dict[str, Change] = {
    "one digest digit changed": lambda r, d: replace(r, signature=_flip(r.signature, d(st.integers(7, 70)))),
    "signed with an unknown secret": lambda r, d: replace(
        r, signature=signatures.sign(OTHER_SECRET, r.timestamp, r.body)
    ),
    "one body byte changed": lambda r, d: replace(r, body=_changed(r.body, d)),
    "body re-serialised": lambda r, d: replace(r, body=_reserialised(r.body)),
    "timestamp moved inside the window": lambda r, d: replace(r, timestamp=str(int(r.timestamp) - _inward(r))),
    "timestamp zero-padded after signing": lambda r, d: replace(r, timestamp="0" + r.timestamp),
}
OUT_OF_WINDOW: dict[str, tuple[str, Change]] = {
    "re-signed too old": ("stale_timestamp", lambda r, d: _resigned(r, str(NOW - d(st.integers(301, 10**8))), SECRET)),
    "re-signed in the future": (
        "future_timestamp",
        lambda r, d: _resigned(r, str(NOW + d(st.integers(301, 10**8))), SECRET),
    ),
}
MALFORMED: dict[str, tuple[str, Change]] = {
    "no signature": ("missing_header", lambda r, d: replace(r, left_out=frozenset({signatures.SIGNATURE}))),
    "no timestamp": ("missing_header", lambda r, d: replace(r, left_out=frozenset({signatures.TIMESTAMP}))),
    "no delivery id": ("missing_header", lambda r, d: replace(r, left_out=frozenset({signatures.DELIVERY_ID}))),
    "blank signature": ("missing_header", lambda r, d: replace(r, signature=" ")),
    "digest without sha256=": ("malformed_header", lambda r, d: replace(r, signature=r.signature[7:])),
    "digest cut short": ("malformed_header", lambda r, d: replace(r, signature=r.signature[:-2])),
    "timestamp in milliseconds and more": ("malformed_header", lambda r, d: replace(r, timestamp=r.timestamp + "0000")),
}


def _inward(request: Request) -> int:
    """One second towards NOW, so the moved timestamp stays inside the window."""
    return 1 if int(request.timestamp) > NOW else -1


def _resigned(request: Request, timestamp: str, secret: str) -> Request:
    signature = signatures.sign(secret, timestamp, request.body)
    return replace(request, signature=signature, timestamp=timestamp, secret=secret)


@st.composite
def requests(draw: st.DrawFn, *, verified: bool = True) -> Request:
    """A request MyTPE signed within the window (body: a MyTPE event, or any bytes), then one change.

    About a third keep a valid signature, a quarter are near-miss forgeries inside the window, and
    the rest are outside it, malformed or random. `verified=False` leaves out those that verify."""
    body = draw(st.one_of(events().map(Event.body), st.binary(min_size=1, max_size=512)))
    timestamp = str(NOW + draw(st.integers(-300, 300)))
    base = Request("", "", timestamp, str(draw(st.uuids())), body, "verified")
    base = _resigned(base, timestamp, SECRET)
    kinds = [*(["signed"] * 3 if verified else []), "forged", "forged", "window", "malformed", "garbage"]
    kind = draw(st.sampled_from(kinds))
    if kind == "signed":
        name = draw(st.sampled_from(list(SIGNED_AS_SENT)))
        return replace(SIGNED_AS_SENT[name](base, draw), mutation=name)
    if kind == "forged":
        name = draw(st.sampled_from(list(FORGED)))
        return replace(FORGED[name](base, draw), mutation=name, verdict="bad_signature")
    if kind == "garbage":
        names = (signatures.SIGNATURE, signatures.TIMESTAMP, signatures.DELIVERY_ID)
        signature, stamp, delivery_id = (draw(garbage) for _ in names)
        left_out = frozenset(name for name in names if draw(st.booleans()))
        return Request("random header values", signature, stamp, delivery_id, body, "", left_out=left_out)
    table = OUT_OF_WINDOW if kind == "window" else MALFORMED
    name = draw(st.sampled_from(list(table)))
    verdict, mutate = table[name]
    return replace(mutate(base, draw), mutation=name, verdict=verdict)
