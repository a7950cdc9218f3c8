from __future__ import annotations

import pytest

from relay import envelope
from relay.errors import HeaderError, SignatureError
from relay.mytpe import signatures
from tests.helpers import HeaderList
from tests.vectors import VECTORS, Vector


def headers_for(vector: Vector, **changes: str) -> HeaderList:
    values = {
        "X-MytpePay-Signature": vector.signature,
        "X-MytpePay-Timestamp": vector.timestamp,
        "X-MytpePay-Delivery-Id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    }
    values.update(changes)
    return HeaderList(values)


def check(vector: Vector, headers: HeaderList, body: bytes | None = None, secrets: list[str] | None = None) -> int:
    parsed = signatures.parse_headers(headers)
    keys = [s.encode() for s in (secrets or [vector.secret])]
    return signatures.verify(
        parsed, vector.body if body is None else body, keys, now=int(vector.timestamp), tolerance=300
    )


def flip(text: bytes, index: int) -> bytes:
    return text[:index] + bytes([text[index] ^ 0x01]) + text[index + 1 :]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_vector_signature_is_what_mytpe_sends(vector: Vector) -> None:
    assert signatures.sign(vector.secret, vector.timestamp, vector.body) == vector.signature
    assert check(vector, headers_for(vector)) == 0


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
@pytest.mark.parametrize("position", [0, 1, 100, -1])
def test_one_body_byte_changed_is_bad_signature(vector: Vector, position: int) -> None:
    body = flip(vector.body, position % len(vector.body))
    with pytest.raises(SignatureError) as caught:
        check(vector, headers_for(vector), body=body)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_timestamp_changed_by_one_is_bad_signature(vector: Vector) -> None:
    changed = str(int(vector.timestamp) + 1)
    parsed = signatures.parse_headers(headers_for(vector, **{"X-MytpePay-Timestamp": changed}))
    with pytest.raises(SignatureError) as caught:
        signatures.verify(parsed, vector.body, [vector.secret.encode()], now=int(vector.timestamp), tolerance=300)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
@pytest.mark.parametrize("position", [7, 30, 70])
def test_one_signature_digit_changed_is_bad_signature(vector: Vector, position: int) -> None:
    digit = vector.signature[position]
    other = "0" if digit != "0" else "1"
    signature = vector.signature[:position] + other + vector.signature[position + 1 :]
    with pytest.raises(SignatureError) as caught:
        check(vector, headers_for(vector, **{"X-MytpePay-Signature": signature}))
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_reserialised_body_is_bad_signature(vector: Vector) -> None:
    body = vector.body.replace(b".00,", b".0,").replace(b"\\/", b"/")
    assert body != vector.body
    with pytest.raises(SignatureError):
        check(vector, headers_for(vector), body=body)


def test_uppercase_hex_is_accepted_after_lower_casing() -> None:
    vector = VECTORS[0]
    upper = "sha256=" + vector.signature.removeprefix("sha256=").upper()
    assert check(vector, headers_for(vector, **{"X-MytpePay-Signature": upper})) == 0


def test_any_configured_secret_verifies_and_reports_its_index() -> None:
    vector = VECTORS[1]
    secrets = [VECTORS[0].secret, VECTORS[2].secret, vector.secret]
    assert check(vector, headers_for(vector), secrets=secrets) == 2
    with pytest.raises(SignatureError):
        check(vector, headers_for(vector), secrets=secrets[:2])


def test_the_secret_is_the_full_whsec_string_not_its_hex() -> None:
    vector = VECTORS[0]
    bare = bytes.fromhex(vector.secret.removeprefix("whsec_"))
    parsed = signatures.parse_headers(headers_for(vector))
    with pytest.raises(SignatureError):
        signatures.verify(parsed, vector.body, [bare], now=int(vector.timestamp), tolerance=300)


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-300, None), (300, None), (-301, "stale_timestamp"), (301, "future_timestamp"), (-86400, "stale_timestamp")],
)
def test_replay_window_applies_both_ways_and_includes_its_edge(offset: int, reason: str | None) -> None:
    vector = VECTORS[2]
    parsed = signatures.parse_headers(headers_for(vector))
    now = int(vector.timestamp) - offset
    if reason is None:
        assert signatures.verify(parsed, vector.body, [vector.secret.encode()], now=now, tolerance=300) == 0
        return
    with pytest.raises(SignatureError) as caught:
        signatures.verify(parsed, vector.body, [vector.secret.encode()], now=now, tolerance=300)
    assert caught.value.reason == reason


def test_window_is_checked_before_the_signature() -> None:
    vector = VECTORS[0]
    parsed = signatures.parse_headers(headers_for(vector, **{"X-MytpePay-Signature": "sha256=" + "0" * 64}))
    with pytest.raises(SignatureError) as caught:
        signatures.verify(
            parsed, vector.body, [vector.secret.encode()], now=int(vector.timestamp) + 1000, tolerance=300
        )
    assert caught.value.reason == "stale_timestamp"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("X-MytpePay-Signature", None, "missing_header"),
        ("X-MytpePay-Timestamp", None, "missing_header"),
        ("X-MytpePay-Delivery-Id", None, "missing_header"),
        ("X-MytpePay-Signature", "", "missing_header"),
        ("X-MytpePay-Timestamp", "   ", "missing_header"),
        ("X-MytpePay-Timestamp", "17757450OO", "malformed_header"),
        ("X-MytpePay-Timestamp", "-1775745000", "malformed_header"),
        ("X-MytpePay-Timestamp", "1775745000.5", "malformed_header"),
        ("X-MytpePay-Timestamp", "2026-04-09T14:30:00Z", "malformed_header"),
        ("X-MytpePay-Timestamp", "1" * 13, "malformed_header"),
        ("X-MytpePay-Signature", "sha1=" + "a" * 64, "malformed_header"),
        ("X-MytpePay-Signature", "SHA256=" + "a" * 64, "malformed_header"),
        ("X-MytpePay-Signature", "a" * 64, "malformed_header"),
        ("X-MytpePay-Signature", "sha256=" + "a" * 63, "malformed_header"),
        ("X-MytpePay-Signature", "sha256=" + "g" * 64, "malformed_header"),
        ("X-MytpePay-Signature", "sha256= " + "a" * 64, "malformed_header"),
        ("X-MytpePay-Signature", "sha256=" + "a" * 64 + ",sha256=" + "b" * 64, "malformed_header"),
        ("X-MytpePay-Delivery-Id", "has space", "malformed_header"),
        ("X-MytpePay-Delivery-Id", "x" * 201, "malformed_header"),
    ],
)
def test_header_edge_cases(name: str, value: str | None, reason: str) -> None:
    values = {
        "X-MytpePay-Signature": VECTORS[0].signature,
        "X-MytpePay-Timestamp": VECTORS[0].timestamp,
        "X-MytpePay-Delivery-Id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    }
    if value is None:
        del values[name]
    else:
        values[name] = value
    with pytest.raises(HeaderError) as caught:
        signatures.parse_headers(HeaderList(values))
    assert caught.value.reason == reason


def test_surrounding_whitespace_is_not_part_of_a_header_value() -> None:
    vector = VECTORS[0]
    headers = headers_for(
        vector,
        **{"X-MytpePay-Signature": f" {vector.signature}\t", "X-MytpePay-Timestamp": f"\t{vector.timestamp} "},
    )
    assert check(vector, headers) == 0


def test_a_repeated_header_is_malformed() -> None:
    vector = VECTORS[0]
    pairs = [
        ("X-MytpePay-Signature", vector.signature),
        ("X-MytpePay-Signature", vector.signature),
        ("X-MytpePay-Timestamp", vector.timestamp),
        ("X-MytpePay-Delivery-Id", "d"),
    ]
    with pytest.raises(HeaderError) as caught:
        signatures.parse_headers(HeaderList(pairs))
    assert caught.value.reason == "malformed_header"


def test_a_timestamp_past_the_year_9999_is_malformed_and_every_one_taken_makes_a_cloudevent_time() -> None:
    """Review finding: a 12-digit signed time past 9999-12-31 passed the header check; with the window waived
    (replay) the envelope then raised ValueError ('year 33658 is out of range'): replay ended in a traceback,
    its publishes in flight unsettled, and the live path with a huge RELAY_REPLAY_WINDOW_SECONDS answered 500."""
    vector = VECTORS[0]
    last = signatures.parse_headers(headers_for(vector, **{"X-MytpePay-Timestamp": str(signatures.LAST_SECOND)}))
    assert envelope.event_time(None, last.timestamp) == "9999-12-31T23:59:59.000000Z"
    for past in (signatures.LAST_SECOND + 1, 999_999_999_999):
        with pytest.raises(HeaderError) as caught:
            signatures.parse_headers(headers_for(vector, **{"X-MytpePay-Timestamp": str(past)}))
        assert caught.value.reason == "malformed_header"
