"""Kafka record -> typed MyTPE event. Money is Decimal (`5000.00` stays exact), times are aware datetimes.

The envelope is the relay's, and is checked: a record that is not a relay CloudEvent raises NotAnEvent (so does
JSON nested deeper than Python's parser reads). `data`'s members are MyTPE's, and none is a reason to skip an
event: a member the typed views cannot hold (a date without an offset, a count of 10.5, an amount of "NaN") is
None there and named in `Event.malformed`, and `data` keeps it as sent (a number past what Decimal holds, its
exponent over 18 digits, as its text: `NumberText`).
Unknown attributes and members are ignored. Events of the newer API generation parse too: their `data` is kept as
a dict and the typed views (`transaction`, `pay_link`) are filled only where the legacy shape is present.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from relay.consumer import headers as record_headers

TYPE_PREFIX = "app.mytpe.pay."
CONTENT_TYPE = "application/cloudevents+json"
_DIGITS = 19
"""Amounts and counts under 10**19: past that they are not MyTPE's (and a count's conversion grows with its size)."""
_MONEY = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # a decimal string, as relay/schemas/transaction.json's `money`


DLQ_REASON = "reason"
"""The header every DLQ record carries (the relay's DLQ contract), a moved family record's CloudEvent included."""


class NotAnEvent(ValueError):
    """The record is not a relay CloudEvent (a DLQ record, or something foreign on the topic)."""


class UnreadableEvent(NotAnEvent):
    """A CloudEvent record (its content type, no DLQ reason) this parser cannot read: JSON nested past about 990
    levels, which Python's parser does not read (the relay refuses bodies nested past 512 now, and took up to
    1,024 before). An event, maybe a payment: it needs a person, not a skip. A NotAnEvent, so that a consumer
    catching only that still moves on."""


class NumberText(str):
    """A JSON number in `data` past what Decimal holds (`1e-999999999999999999999`: its exponent over 18 digits),
    kept as its text. The relay takes such a number (its parser reads it as a float: 0.0 or an infinity); a typed
    view names it in `malformed`, never reads it as an amount, a count or a text."""

    __slots__ = ()


def _number(text: str) -> Decimal | NumberText:
    """A JSON number with a fraction or an exponent: a Decimal, exact; past what Decimal holds, its text."""
    try:
        return Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation: an exponent past Decimal's (10**18)
        return NumberText(text)


class KafkaRecord(Protocol):
    """What is read from aiokafka's ConsumerRecord, or any client's record whose `value` and `headers` are
    attributes (confluent-kafka's are methods: pass an object holding what they return)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Customer:
    name: str | None
    email: str | None
    phone: str | None


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    name: str | None


@dataclass(frozen=True, slots=True)
class PayLink:
    id: str
    status: str
    title: str | None
    slug: str | None
    type: str | None
    payment_mode: str | None
    amount: Decimal | None
    max_payments: int | None
    successful_payments_count: int | None
    remaining_payments: int | None


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    status: str
    amount: Decimal | None
    order_number: str | None
    order_id: str | None
    payment_method: str | None
    environment: str | None
    approval_code: str | None
    gateway_message: str | None
    motif: str | None
    customer: Customer | None
    metadata: Mapping[str, Any]
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    """The CloudEvents id, which is MyTPE's delivery id: deduplicate on it."""
    type: str
    event: str
    """MyTPE's event name, e.g. `transaction.completed`."""
    source: str
    subject: str | None
    time: datetime
    received_at: datetime | None
    partition_key: str | None
    data: Mapping[str, Any]
    transaction: Transaction | None
    pay_link: PayLink | None
    instance: Instance | None
    traceparent: str | None = None
    """The CloudEvents Distributed Tracing `traceparent` (the creation context), as sent and unchecked."""
    tracestate: str | None = None
    malformed: tuple[str, ...] = ()
    """The members of `data` the typed views could not hold, as paths (`transaction.created_at`): None in the
    view, kept as sent in `data`. Not empty: decide explicitly (alert), never skip the event for it."""

    @property
    def family(self) -> str:
        return self.event.partition(".")[0]


def parse_record(record: KafkaRecord) -> Event:
    """The typed event of a family-topic record. Raises NotAnEvent for anything else (a DLQ record too, even one
    holding a CloudEvent; UnreadableEvent, a NotAnEvent, for an event this parser cannot read), and TypeError
    for a record whose `value` or `headers` is a method, not what it returns (read as no headers, every record
    would be NotAnEvent: every event skipped, unseen)."""
    headers, raw = getattr(record, "headers", None), getattr(record, "value", None)
    if callable(headers) or callable(raw):
        raise TypeError("parse_record: the record's value or headers are methods; pass what they return instead")
    given = record_headers.values(headers, "content-type")
    if not any((record_headers.text(value) or "").lower().startswith(CONTENT_TYPE) for value in given):
        raise NotAnEvent("not a structured-mode CloudEvent (no cloudevents content-type header)")
    if record_headers.values(headers, DLQ_REASON):  # a spooled record Kafka refused, moved there with its CloudEvent
        raise NotAnEvent("a DLQ record (it has a reason header), not a live event")
    if raw is None:
        raise NotAnEvent("the record has no value")
    return parse_event(raw)


def parse_event(value: bytes) -> Event:
    """The typed event of a CloudEvents JSON document. Raises NotAnEvent (UnreadableEvent: nested too deep)."""
    try:
        document = json.loads(value, parse_float=_number)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError; TypeError: not bytes or text
        raise NotAnEvent(f"not JSON: {exc}") from None
    except RecursionError:  # Python's json reads about 990 levels; the relay took up to 1,024 before its bound
        raise UnreadableEvent("not JSON this parser reads: nested too deep") from None
    if not isinstance(document, dict) or document.get("specversion") != "1.0":
        raise NotAnEvent("not a CloudEvents 1.0 document")
    event_type, data = document.get("type"), document.get("data")
    if not isinstance(event_type, str) or not event_type.startswith(TYPE_PREFIX) or not isinstance(data, dict):
        raise NotAnEvent("not a MyTPE event (type or data)")
    members = _Members()
    try:
        return Event(
            id=_required(document, "id"),
            type=event_type,
            event=event_type.removeprefix(TYPE_PREFIX),
            source=_required(document, "source"),
            subject=_optional(document, "subject"),
            time=_time(document.get("time"), "time"),
            received_at=_optional_time(document.get("mytpereceivedat"), "mytpereceivedat"),
            partition_key=_optional(document, "partitionkey"),
            data=data,
            transaction=members.transaction(data.get("transaction")),
            pay_link=members.pay_link(data.get("pay_link")),
            instance=members.instance(data.get("instance")),
            traceparent=_loose(document.get("traceparent")),
            tracestate=_loose(document.get("tracestate")),
            malformed=tuple(members.malformed),
        )
    except (TypeError, ValueError, ArithmeticError) as exc:  # the envelope's attributes, the relay's own
        raise NotAnEvent(f"malformed event: {exc}") from None


def _required(source: Mapping[str, Any], name: str) -> str:
    value = _optional(source, name)
    if value is None:
        raise ValueError(f"{name} is missing")
    return value


def _optional(source: Mapping[str, Any], name: str) -> str | None:
    value = source.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string")
    return str(value)


def _loose(value: Any) -> str | None:
    """An attribute a consumer must never fail on: a string, or nothing."""
    return value if isinstance(value, str) else None


def _time(value: Any, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"{name}: {value!r} is not an RFC 3339 time with an offset")
    return moment


def _optional_time(value: Any, name: str) -> datetime | None:
    return None if value is None else _time(value, name)


class _Members:
    """Reads `data`'s members into the typed views, never raising: a member present but not of its type is None,
    and its path is kept in `malformed`."""

    def __init__(self) -> None:
        self.malformed: list[str] = []

    def _bad(self, path: str) -> None:
        self.malformed.append(path)

    def text(self, source: Mapping[str, Any], name: str, path: str) -> str | None:
        value = source.get(name)
        if value is None:
            return None
        if isinstance(value, bool | NumberText) or not isinstance(value, str | int):
            self._bad(f"{path}.{name}")
            return None
        return str(value)

    def money(self, source: Mapping[str, Any], name: str, path: str) -> Decimal | None:
        """A number, or a decimal string as the schema's `money` (never NaN, an infinity, `5_000` or spaces),
        under 10**19 in size (`1E+999999` is no amount)."""
        value = source.get(name)
        if value is None:
            return None
        numeric = isinstance(value, Decimal | int) and not isinstance(value, bool)
        amount = Decimal(value) if numeric or (isinstance(value, str) and _MONEY.fullmatch(value)) else None
        if amount is not None and amount.is_finite() and amount.adjusted() < _DIGITS:
            return amount
        self._bad(f"{path}.{name}")
        return None

    def count(self, source: Mapping[str, Any], name: str, path: str) -> int | None:
        """A whole number from 0 to under 10**19 (one written `10.0` included; `1E+999999999` is not converted,
        which would take hours)."""
        value = source.get(name)
        if value is None:
            return None
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, Decimal) and value.is_finite() and value.adjusted() < _DIGITS:
            number = int(value) if value == value.to_integral_value() else None
        if number is not None and 0 <= number < 10**_DIGITS:
            return number
        self._bad(f"{path}.{name}")
        return None

    def time(self, source: Mapping[str, Any], name: str, path: str) -> datetime | None:
        value = source.get(name)
        try:
            return None if value is None else _time(value, name)
        except ValueError:
            self._bad(f"{path}.{name}")
            return None

    def _shaped(self, value: Any, path: str, *required: str) -> dict[str, Any] | None:
        """`value` when it is an object holding each `required` member as text; else None. Present but not such
        an object: its path, or each required member absent or unreadable, is named."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self._bad(path)
            return None
        readable = [self.text(value, name, path) for name in required]  # a member of another type: named
        for name, text in zip(required, readable, strict=True):
            if value.get(name) is None or text == "":  # absent, or empty: no id (two payments under "" are not one)
                self._bad(f"{path}.{name}")
        return value if all(readable) else None

    def instance(self, value: Any) -> Instance | None:
        found = self._shaped(value, "instance", "id")
        if found is None:
            return None
        return Instance(id=str(found["id"]), name=self.text(found, "name", "instance"))

    def pay_link(self, value: Any) -> PayLink | None:
        found, path = self._shaped(value, "pay_link", "id", "status"), "pay_link"
        if found is None:
            return None
        return PayLink(
            id=str(found["id"]),
            status=str(found["status"]),
            title=self.text(found, "title", path),
            slug=self.text(found, "slug", path),
            type=self.text(found, "type", path),
            payment_mode=self.text(found, "payment_mode", path),
            amount=self.money(found, "amount", path),
            max_payments=self.count(found, "max_payments", path),
            successful_payments_count=self.count(found, "successful_payments_count", path),
            remaining_payments=self.count(found, "remaining_payments", path),
        )

    def transaction(self, value: Any) -> Transaction | None:
        found, path = self._shaped(value, "transaction", "id", "status"), "transaction"
        if found is None:
            return None
        metadata = found.get("metadata")
        if metadata is not None and not isinstance(metadata, dict) and metadata != []:  # PHP: an empty map is []
            self._bad(f"{path}.metadata")
        return Transaction(
            id=str(found["id"]),
            status=str(found["status"]),
            amount=self.money(found, "amount", path),
            order_number=self.text(found, "order_number", path),
            order_id=self.text(found, "order_id", path),
            payment_method=self.text(found, "payment_method", path),
            environment=self.text(found, "environment", path),
            approval_code=self.text(found, "approval_code", path),
            gateway_message=self.text(found, "gateway_message", path),
            motif=self.text(found, "motif", path),
            customer=self.customer(found.get("customer")),
            metadata=metadata if isinstance(metadata, dict) else {},  # PHP sends an empty map as []
            created_at=self.time(found, "created_at", path),
            updated_at=self.time(found, "updated_at", path),
        )

    def customer(self, value: Any) -> Customer | None:
        path = "transaction.customer"
        if value is None:
            return None
        if not isinstance(value, dict):
            self._bad(path)
            return None
        return Customer(**{name: self.text(value, name, path) for name in ("name", "email", "phone")})
