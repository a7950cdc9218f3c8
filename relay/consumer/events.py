"""Kafka record -> typed MyTPE event. Money is Decimal (`5000.00` stays exact), times are aware datetimes.

Unknown attributes and members are ignored, so a newer relay or a newer MyTPE payload never breaks a
consumer. Events of the newer API generation parse too: their `data` is kept as a dict and the typed
views (`transaction`, `pay_link`) are filled only where the legacy shape is present.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

TYPE_PREFIX = "app.mytpe.pay."
CONTENT_TYPE = "application/cloudevents+json"


class NotAnEvent(ValueError):
    """The record is not a relay CloudEvent (a DLQ record, or something foreign on the topic)."""


class KafkaRecord(Protocol):
    """What is read from aiokafka's ConsumerRecord (or any client's record)."""

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

    @property
    def family(self) -> str:
        return self.event.partition(".")[0]


def parse_record(record: KafkaRecord) -> Event:
    """The typed event of a family-topic record. Raises NotAnEvent for anything else."""
    headers = {name.lower(): value for name, value in record.headers or ()}
    if not headers.get("content-type", b"").decode("latin-1").startswith(CONTENT_TYPE):
        raise NotAnEvent("not a structured-mode CloudEvent (no cloudevents content-type header)")
    if record.value is None:
        raise NotAnEvent("the record has no value")
    return parse_event(record.value)


def parse_event(value: bytes) -> Event:
    """The typed event of a CloudEvents JSON document. Raises NotAnEvent."""
    try:
        document = json.loads(value, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAnEvent(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("specversion") != "1.0":
        raise NotAnEvent("not a CloudEvents 1.0 document")
    event_type, data = document.get("type"), document.get("data")
    if not isinstance(event_type, str) or not event_type.startswith(TYPE_PREFIX) or not isinstance(data, dict):
        raise NotAnEvent("not a MyTPE event (type or data)")
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
            transaction=_transaction(data.get("transaction")),
            pay_link=_pay_link(data.get("pay_link")),
            instance=_instance(data.get("instance")),
            traceparent=_loose(document.get("traceparent")),
            tracestate=_loose(document.get("tracestate")),
        )
    except (TypeError, ValueError, ArithmeticError) as exc:
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


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValueError("amounts must be numbers or decimal strings")
    return Decimal(value)


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("counts must be integers")
    return value


def _instance(value: Any) -> Instance | None:
    if not isinstance(value, dict) or value.get("id") is None:
        return None
    return Instance(id=_required(value, "id"), name=_optional(value, "name"))


def _pay_link(value: Any) -> PayLink | None:
    if not isinstance(value, dict) or value.get("id") is None or value.get("status") is None:
        return None
    return PayLink(
        id=_required(value, "id"),
        status=_required(value, "status"),
        title=_optional(value, "title"),
        slug=_optional(value, "slug"),
        type=_optional(value, "type"),
        payment_mode=_optional(value, "payment_mode"),
        amount=_money(value.get("amount")),
        max_payments=_count(value.get("max_payments")),
        successful_payments_count=_count(value.get("successful_payments_count")),
        remaining_payments=_count(value.get("remaining_payments")),
    )


def _transaction(value: Any) -> Transaction | None:
    if not isinstance(value, dict) or value.get("id") is None or value.get("status") is None:
        return None
    customer = value.get("customer")
    metadata = value.get("metadata")
    return Transaction(
        id=_required(value, "id"),
        status=_required(value, "status"),
        amount=_money(value.get("amount")),
        order_number=_optional(value, "order_number"),
        order_id=_optional(value, "order_id"),
        payment_method=_optional(value, "payment_method"),
        environment=_optional(value, "environment"),
        approval_code=_optional(value, "approval_code"),
        gateway_message=_optional(value, "gateway_message"),
        motif=_optional(value, "motif"),
        customer=Customer(**{k: _optional(customer, k) for k in ("name", "email", "phone")})
        if isinstance(customer, dict)
        else None,
        metadata=metadata if isinstance(metadata, dict) else {},  # PHP sends an empty map as []
        created_at=_optional_time(value.get("created_at"), "created_at"),
        updated_at=_optional_time(value.get("updated_at"), "updated_at"),
    )
