"""Realistic MyTPE Pay webhook bodies for the 12 legacy event types, serialised as MyTPE does
(amounts with two decimals, e.g. `5000.00`), for `mytpe-relay send` and the tests."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

TRANSACTION_EVENTS = tuple(f"transaction.{s}" for s in ("pending", "processing", "completed", "failed", "refused"))
PAY_LINK_EVENTS = tuple(
    f"pay_link.{s}" for s in ("created", "updated", "activated", "deactivated", "closed", "expired", "deleted")
)
EVENTS = TRANSACTION_EVENTS + PAY_LINK_EVENTS

_LINK_STATUS = {
    "created": "active", "updated": "active", "activated": "active", "deactivated": "inactive",
    "closed": "closed", "expired": "expired", "deleted": "inactive",
}  # fmt: skip
_AMOUNT = re.compile(rb'"\\u0000amount:([0-9]+\.[0-9]{2})"')
_NAMES = ("Karim Benali", "Amina Haddad", "Yacine Bouzid", "Lina Meziane", "Sofiane Khelifi")


def _amount(value: float) -> str:
    """A marker that `render` turns into a bare JSON number with two decimals."""
    return f"\u0000amount:{value:.2f}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pay_link(rng: random.Random, status: str = "active") -> dict[str, Any]:
    mode = rng.choice(("reusable", "one_shot", "limited"))
    count = rng.randint(0, 20)
    max_payments = {"reusable": None, "one_shot": 1, "limited": 20}[mode]
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "title": "Consultation Dr. Ahmed",
        "details": "Consultation médicale",
        "slug": f"consultation-{rng.randint(100, 999)}",
        "type": "dynamic",
        "amount": _amount(rng.choice((1500, 2500, 5000, 12000))),
        "status": status,
        "payment_mode": mode,
        "max_payments": max_payments,
        "successful_payments_count": count,
        "remaining_payments": None if max_payments is None else max(max_payments - count, 0),
    }


def transaction(rng: random.Random, status: str, now: datetime) -> dict[str, Any]:
    failed = status in {"failed", "refused"}
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "order_number": f"ORD-{int(now.timestamp())}-{rng.randint(100, 999)}",
        "order_id": str(rng.randint(10_000_000, 99_999_999)),
        "status": status,
        "amount": _amount(rng.choice((1200.5, 2500, 5000))),
        "payment_method": "online",
        "environment": "production",
        "approval_code": None if failed or status == "pending" else f"A{rng.randint(10000, 99999)}",
        "gateway_message": "Paiement refusé" if failed else None,
        "motif": "Solde insuffisant" if status == "refused" else None,
        "customer": {"name": rng.choice(_NAMES), "email": "client@example.dz", "phone": "+213555123456"},
        "metadata": {"reference": f"REF-{now.year}-{rng.randint(1, 999):03d}"},
        "created_at": _stamp(now - timedelta(minutes=5)),
        "updated_at": _stamp(now),
    }


def build(
    event: str,
    *,
    delivery_id: str | None = None,
    now: datetime | None = None,
    seed: int | None = None,
    instance: str = "abc123-def456",
) -> bytes:
    """The body MyTPE would send for `event`. Raises ValueError for an unknown event.

    The same `seed` gives the same entity ids: the events of one lifecycle share it."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; one of: {', '.join(EVENTS)}")
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    moment = now or datetime.now(UTC)
    family, action = event.split(".", 1)
    data: dict[str, Any]
    if family == "transaction":
        data = {"transaction": transaction(rng, action, moment), "pay_link": pay_link(rng)}
    else:
        data = {"pay_link": pay_link(rng, _LINK_STATUS[action])}
    data["instance"] = {"id": instance, "name": "Cabinet Dr. Ahmed"}
    body = {
        "delivery_id": delivery_id or str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event": event,
        "timestamp": _stamp(moment),
        "data": data,
    }
    return render(body)


def render(body: dict[str, Any]) -> bytes:
    """Compact JSON with amounts as two-decimal numbers, like MyTPE's PHP encoder."""
    return _AMOUNT.sub(rb"\1", orjson.dumps(body))


TRANSACTION_ENDINGS = ("completed", "failed", "refused")
PAY_LINK_MIDDLES = ("updated", "deactivated", "activated")
PAY_LINK_ENDINGS = ("closed", "expired", "deleted")


def lifecycle(rng: random.Random) -> list[str]:
    """The events of one entity in MyTPE's order (spec §6): a transaction goes pending, processing,
    then completed, failed or refused; a pay link is created, changes a few times, then ends."""
    if rng.random() < 0.6:
        return ["transaction.pending", "transaction.processing", f"transaction.{rng.choice(TRANSACTION_ENDINGS)}"]
    middle = [f"pay_link.{rng.choice(PAY_LINK_MIDDLES)}" for _ in range(rng.randint(0, 2))]
    return ["pay_link.created", *middle, f"pay_link.{rng.choice(PAY_LINK_ENDINGS)}"]
