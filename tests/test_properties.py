"""Property-based tests: no input yields an unexpected exception or a 500; nothing unsigned is published."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from relay.errors import HeaderError, SignatureError
from relay.http.app import create_app
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable, parse
from relay.settings import Settings
from tests.fakes import FakePublisher
from tests.helpers import SECRET, HeaderList, signed_headers

NOW = 1775745000
header_values = st.one_of(
    st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=120),
    st.from_regex(r"sha256=[0-9a-fA-F]{60,68}", fullmatch=True),
    st.from_regex(r"[0-9 ]{0,14}", fullmatch=True),
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(
    signature=st.none() | header_values,
    timestamp=st.none() | header_values,
    delivery_id=st.none() | header_values,
    body=st.binary(max_size=512),
)
def test_verifier_raises_only_its_own_errors(signature, timestamp, delivery_id, body) -> None:
    pairs = [
        (name, value)
        for name, value in (
            (signatures.SIGNATURE, signature),
            (signatures.TIMESTAMP, timestamp),
            (signatures.DELIVERY_ID, delivery_id),
        )
        if value is not None
    ]
    try:
        parsed = signatures.parse_headers(HeaderList(pairs))
        signatures.verify(parsed, body, [SECRET.encode()], now=NOW, tolerance=300)
    except (HeaderError, SignatureError):
        return
    # Only a real signature of this body passes; random digests must not.
    assert signatures.sign(SECRET, parsed.timestamp_text, body).lower() == (signature or "").strip(" \t").lower()


@given(body=st.binary(max_size=2048))
def test_parser_raises_only_unusable_on_bytes(body: bytes) -> None:
    try:
        webhook = parse(body, "header-id")
    except Unusable as exc:
        assert exc.reason in {"invalid_utf8", "malformed_json", "not_an_object", "missing_event", "missing_data"}
        return
    assert isinstance(webhook.data, dict)


@given(value=json_like, event=st.text(max_size=30), extra=st.dictionaries(st.text(max_size=8), json_like, max_size=3))
def test_parser_on_json_shapes_keeps_data_bytes_exact(value, event, extra) -> None:
    import json

    document = {**extra, "event": event, "data": value}
    body = json.dumps(document, ensure_ascii=False).encode()
    try:
        webhook = parse(body, "h")
    except Unusable:
        return
    assert json.loads(webhook.data_bytes) == value


@pytest.fixture
def app_client(settings_factory: Callable[..., Settings]):
    publisher = FakePublisher()
    app = create_app(settings_factory(max_body_bytes=4096), publisher=publisher, clock=lambda: float(NOW))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, publisher


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    signature=st.none() | header_values,
    timestamp=st.none() | header_values,
    delivery_id=st.none() | header_values,
    body=st.binary(max_size=6000),
)
def test_no_unsigned_request_is_published_or_answered_500(app_client, signature, timestamp, delivery_id, body):
    client, publisher = app_client
    before = len(publisher.sent)
    headers = [
        (name, value)
        for name, value in (
            ("X-MytpePay-Signature", signature),
            ("X-MytpePay-Timestamp", timestamp),
            ("X-MytpePay-Delivery-Id", delivery_id),
        )
        if value is not None
    ]
    response = client.post(
        "/webhooks/mytpe", content=body, headers=[(k.encode(), v.encode("latin-1")) for k, v in headers]
    )
    assert response.status_code in {400, 401, 413}, response.text
    assert response.json()["reason"]
    assert len(publisher.sent) == before


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=3000) | json_like.map(lambda v: str(v).encode()))
def test_every_signed_body_is_kept_exactly_once(app_client, body: bytes) -> None:
    client, publisher = app_client
    before = len(publisher.sent)
    delivery_id = str(uuid.uuid4())
    headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    response = client.post("/webhooks/mytpe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] in {"accepted", "quarantined"}
    assert len(publisher.sent) == before + 1
    record = publisher.sent[-1]
    if response.json()["status"] == "quarantined":
        assert record.topic.endswith(".dlq") and record.value == body
