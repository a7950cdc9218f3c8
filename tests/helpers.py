"""Build a valid signed request, then break one thing per test."""

from __future__ import annotations

import uuid

from relay.mytpe import samples, signatures

SECRET = "whsec_0123456789abcdef0123456789abcdef0123456789abcdef"
OLD_SECRET = "whsec_ffffffffffffffffffffffffffffffffffffffffffffffff"


def signed_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | str,
    delivery_id: str | None = None,
    event: str = "transaction.completed",
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "MytpePay-Webhook/1.0",
        "X-MytpePay-Signature": signatures.sign(secret, timestamp, body),
        "X-MytpePay-Timestamp": str(timestamp),
        "X-MytpePay-Event": event,
        "X-MytpePay-Delivery-Id": delivery_id or str(uuid.uuid4()),
    }


def sample(event: str = "transaction.completed", *, delivery_id: str | None = None) -> tuple[bytes, str]:
    """A realistic body and its delivery id."""
    delivery_id = delivery_id or str(uuid.uuid4())
    return samples.build(event, delivery_id=delivery_id), delivery_id


class HeaderList:
    """A `getlist` view over (name, value) pairs, case-insensitive like HTTP."""

    def __init__(self, pairs: list[tuple[str, str]] | dict[str, str]) -> None:
        items = pairs.items() if isinstance(pairs, dict) else pairs
        self._pairs = [(name.lower(), value) for name, value in items]

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self._pairs if name == key.lower()]
