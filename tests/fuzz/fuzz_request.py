"""atheris harness: fuzzed headers and bodies through verification, parsing, routing and encoding.

Only the relay's own refusals (HeaderError, SignatureError, Unusable) may escape; anything else is
a crash. A correctly signed fuzzed body must become either a routed CloudEvent whose `data` parses
back to the body's `data`, or a DLQ reason. Run: python tests/fuzz/fuzz_request.py -runs=N
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports():
    from relay import envelope
    from relay.errors import HeaderError, SignatureError
    from relay.mytpe import signatures
    from relay.mytpe.payload import Unusable, parse
    from relay.routing import Router

SECRET = b"whsec_0123456789abcdef0123456789abcdef0123456789abcdef"
NOW = 1775745000
ROUTER = Router.for_families("mytpe", {"transaction", "pay_link"})
RECEIVED = datetime(2026, 4, 9, tzinfo=UTC)


class Headers:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def getlist(self, key: str) -> list[str]:
        return [self._values[key]] if key in self._values else []


def route_and_encode(body: bytes) -> None:
    try:
        webhook = parse(body, "header-id")
        destination = ROUTER.resolve(webhook)
    except Unusable:
        return
    value = envelope.encode(webhook, destination, signed_at=NOW, received_at=RECEIVED)
    event = json.loads(value)
    if event["data"] != json.loads(webhook.data_bytes) or event["id"] != webhook.delivery_id:
        raise AssertionError("envelope data or id differs from the body")


def test_one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    signed = provider.ConsumeBool()
    timestamp = str(NOW) if signed else provider.ConsumeUnicodeNoSurrogates(16)
    raw_signature = provider.ConsumeUnicodeNoSurrogates(80)
    body = provider.ConsumeBytes(provider.remaining_bytes())
    signature = signatures.sign(SECRET.decode(), timestamp, body) if signed else raw_signature
    headers = Headers({signatures.SIGNATURE: signature, signatures.TIMESTAMP: timestamp, signatures.DELIVERY_ID: "d-1"})
    try:
        parsed = signatures.parse_headers(headers)
        signatures.verify(parsed, body, [SECRET], now=NOW, tolerance=300)
    except (HeaderError, SignatureError):
        if signed:
            raise
        return
    route_and_encode(body)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
