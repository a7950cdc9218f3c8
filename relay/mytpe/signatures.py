"""MyTPE webhook signatures: pure, synchronous checks over the raw bytes.

signed bytes = ASCII(timestamp header) + b"." + raw body
header       = "sha256=" + lowercase hex(HMAC-SHA256(key = full `whsec_...` secret, signed bytes))
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.errors import HeaderError, SignatureError

SIGNATURE = "x-mytpepay-signature"
TIMESTAMP = "x-mytpepay-timestamp"
DELIVERY_ID = "x-mytpepay-delivery-id"
EVENT = "x-mytpepay-event"

_SIGNATURE_VALUE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TIMESTAMP_VALUE = re.compile(r"[0-9]{1,12}")
LAST_SECOND = 253_402_300_799
"""9999-12-31T23:59:59Z: the CloudEvent's `time` (RFC 3339, a four-digit year) can hold no later one. A later
signed time passed a waived window (replay) or a huge one, then failed in the envelope: replay ended in a
traceback, the live path in a 500."""
DELIVERY_ID_VALUE = re.compile(r"[\x21-\x7e]{1,200}")
"""A delivery id, in the header or the body: 1-200 visible ASCII characters (no space, no line break)."""


class HeaderSource(Protocol):
    def getlist(self, key: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    """The MyTPE headers of one request, syntactically valid."""

    timestamp: int
    timestamp_text: str
    digest: bytes
    delivery_id: str


def _single(headers: HeaderSource, name: str) -> str:
    """One header value without surrounding whitespace (HTTP's OWS is not part of a value)."""
    values = headers.getlist(name)
    if len(values) > 1:
        raise HeaderError("malformed_header", f"{name} given {len(values)} times")
    value = values[0].strip(" \t") if values else ""
    if not value:
        raise HeaderError("missing_header", name)
    return value


def parse_headers(headers: HeaderSource) -> SignedHeaders:
    """Read the signature, timestamp and delivery-id headers. Raises HeaderError."""
    signature = _single(headers, SIGNATURE)
    timestamp = _single(headers, TIMESTAMP)
    delivery_id = _single(headers, DELIVERY_ID)
    sig_match = _SIGNATURE_VALUE.fullmatch(signature)
    if sig_match is None:
        raise HeaderError("malformed_header", f"{SIGNATURE} must be sha256=<64 hex digits>")
    if _TIMESTAMP_VALUE.fullmatch(timestamp) is None or (seconds := int(timestamp)) > LAST_SECOND:
        raise HeaderError("malformed_header", f"{TIMESTAMP} must be Unix seconds up to the year 9999")
    if DELIVERY_ID_VALUE.fullmatch(delivery_id) is None:
        raise HeaderError("malformed_header", f"{DELIVERY_ID} must be 1-200 visible ASCII characters")
    return SignedHeaders(
        timestamp=seconds,
        timestamp_text=timestamp,
        digest=bytes.fromhex(sig_match.group(1)),
        delivery_id=delivery_id,
    )


def check_window(timestamp: int, *, now: float, tolerance: int) -> None:
    """Accept `abs(now - timestamp) <= tolerance`. Raises SignatureError."""
    if timestamp < now - tolerance:
        raise SignatureError("stale_timestamp", f"older than {tolerance}s")
    if timestamp > now + tolerance:
        raise SignatureError("future_timestamp", f"more than {tolerance}s ahead")


def digest(secret: bytes, timestamp_text: str, body: bytes) -> bytes:
    mac = hmac.new(secret, timestamp_text.encode("ascii"), hashlib.sha256)
    mac.update(b".")
    mac.update(body)
    return mac.digest()


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The header value MyTPE sends for `body` at `timestamp`."""
    return "sha256=" + digest(secret.encode("utf-8"), str(timestamp), body).hex()


def verify(
    headers: SignedHeaders,
    body: bytes,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: int,
) -> int:
    """Check the replay window, then the signature against every secret in constant time.

    Args:
        headers: the parsed MyTPE headers.
        body: the raw request body, exactly as received.
        secrets: every accepted secret (rotation), as bytes of the full `whsec_...` string.
        now: the current Unix time.
        tolerance: the replay window in seconds, applied in both directions.

    Returns:
        The index in `secrets` of the secret that signed the request.

    Raises:
        SignatureError: `stale_timestamp`, `future_timestamp` or `bad_signature`.
    """
    check_window(headers.timestamp, now=now, tolerance=tolerance)
    matched = -1
    for index, secret in enumerate(secrets):
        expected = digest(secret, headers.timestamp_text, body)
        if hmac.compare_digest(expected, headers.digest) and matched < 0:
            matched = index
    if matched < 0:
        raise SignatureError("bad_signature", "matches no configured secret")
    return matched
