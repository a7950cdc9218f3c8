"""The HTTP contract, in process: every row of the table, with a fake publisher."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import KafkaRefused
from relay.http.app import create_app
from relay.metrics import Metrics
from relay.settings import Secret, Settings
from relay.types import Ack
from tests.conftest import require_tool
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import OLD_SECRET, SECRET, sample, signed_headers
from tests.vectors import VECTORS

NOW = 1775745000
URL = "/webhooks/mytpe"


class Harness:
    def __init__(self, client: TestClient, publisher: FakePublisher, metrics: Metrics) -> None:
        self.client = client
        self.publisher = publisher
        self.metrics = metrics

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(URL, content=body, headers=headers)

    def send(self, event: str = "transaction.completed", **kwargs: Any) -> httpx.Response:
        body, delivery_id = sample(event, delivery_id=kwargs.pop("delivery_id", None))
        return self.post(body, signed_headers(body, timestamp=NOW, delivery_id=delivery_id, **kwargs))

    def value(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample_ in family.samples:
                # the legacy source is the only one here: a test names `source` only when it matters
                seen = {k: v for k, v in sample_.labels.items() if k != "source" or "source" in labels}
                if sample_.name == name and seen == labels:
                    return sample_.value
        return 0.0


@pytest.fixture
def make_harness(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Harness]]:
    clients: list[TestClient] = []

    def make(publisher: FakePublisher | None = None, **overrides: Any) -> Harness:
        publisher = publisher or FakePublisher()
        metrics = Metrics()
        settings = settings_factory(**overrides)
        app = create_app(settings, publisher=publisher, metrics=metrics, clock=lambda: float(NOW))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Harness(client, publisher, metrics)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def test_accepted_only_after_the_publish(harness: Harness) -> None:
    response = harness.send(delivery_id="d-1")
    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "delivery_id": "d-1"}
    assert len(harness.publisher.sent) == 1
    assert harness.publisher.sent[0].topic.endswith(".transaction")
    assert harness.value("mytpe_relay_requests_total", outcome="accepted") == 1
    assert harness.value("mytpe_relay_secret_matches_total", secret_index="0") == 1


def test_duplicate_is_answered_and_not_republished(harness: Harness) -> None:
    assert harness.send(delivery_id="d-2").json()["status"] == "accepted"
    response = harness.send(delivery_id="d-2")
    assert response.status_code == 200
    assert response.json() == {"status": "duplicate", "delivery_id": "d-2"}
    assert len(harness.publisher.sent) == 1
    assert harness.value("mytpe_relay_duplicates_total") == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json at all", "malformed_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"delivery_id":"x","event":"transaction.completed"}', "missing_data"),
        (b'{"event":"refund.created","data":{"refund":{"id":"r"}}}', "unroutable_event"),
        (b"\xc3\x28 invalid utf-8", "invalid_utf8"),
        # review: a lone surrogate escape in an id the CloudEvent or the key carries was a 500 on every attempt
        (b'{"event":"transaction.completed","data":{"transaction":{"id":"t\\udc00"}}}', "malformed_json"),
        (
            b'{"event":"transaction.completed","data":{"instance":{"id":"\\ud800"},"transaction":{"id":"t"}}}',
            "malformed_json",
        ),
        # review: the body's delivery id was not checked as the header's is (it reached log lines, keys, the answer)
        (
            b'{"delivery_id":"d4\\n2026 FAKE LOG LINE","event":"transaction.completed","data":{}}',
            "malformed_delivery_id",
        ),
        (b'{"delivery_id":"\\ud800","event":"transaction.completed","data":{}}', "malformed_delivery_id"),
        (b'{"delivery_id":"' + b"d" * 201 + b'","event":"transaction.completed","data":{}}', "malformed_delivery_id"),
    ],
)
def test_verified_but_unusable_goes_to_the_dlq(harness: Harness, body: bytes, reason: str) -> None:
    response = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="q-1"))
    assert response.status_code == 200
    assert response.json() == {"status": "quarantined", "delivery_id": "q-1", "reason": reason}
    (record,) = harness.publisher.sent
    assert record.topic.endswith(".dlq")
    assert record.value == body
    assert dict(record.headers)["reason"] == reason.encode()
    assert harness.value("mytpe_relay_quarantined_total", reason=reason) == 1


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"X-MytpePay-Signature": None}, 400, "missing_header"),
        ({"X-MytpePay-Timestamp": None}, 400, "missing_header"),
        ({"X-MytpePay-Delivery-Id": None}, 400, "missing_header"),
        ({"X-MytpePay-Timestamp": ""}, 400, "missing_header"),
        ({"X-MytpePay-Timestamp": "yesterday"}, 400, "malformed_header"),
        ({"X-MytpePay-Signature": "sha512=" + "a" * 64}, 400, "malformed_header"),
        ({"X-MytpePay-Signature": "sha256=" + "a" * 64}, 401, "bad_signature"),
    ],
)
def test_header_rejections(harness: Harness, change: dict[str, str | None], status: int, reason: str) -> None:
    body, delivery_id = sample()
    headers: dict[str, Any] = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    response = harness.post(body, headers)
    assert response.status_code == status
    assert response.json()["status"] == "rejected"
    assert response.json()["reason"] == reason
    assert harness.publisher.sent == []
    assert harness.value("mytpe_relay_verification_failures_total", reason=reason) == 1
    assert harness.value("mytpe_relay_requests_total", outcome=reason) == 1


@pytest.mark.parametrize(("offset", "reason"), [(-301, "stale_timestamp"), (301, "future_timestamp")])
def test_timestamp_outside_the_window(harness: Harness, offset: int, reason: str) -> None:
    body, delivery_id = sample()
    response = harness.post(body, signed_headers(body, timestamp=NOW + offset, delivery_id=delivery_id))
    assert (response.status_code, response.json()["reason"]) == (401, reason)
    assert harness.value("mytpe_relay_verification_failures_total", reason=reason) == 1


def test_uppercase_hex_and_whitespace_are_accepted(harness: Harness) -> None:
    body, delivery_id = sample()
    headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    headers["X-MytpePay-Signature"] = "sha256=" + headers["X-MytpePay-Signature"][7:].upper()
    headers["X-MytpePay-Timestamp"] = f"  {NOW}  "
    assert harness.post(body, headers).json()["status"] == "accepted"


def test_duplicated_signature_header_is_malformed(harness: Harness) -> None:
    body, delivery_id = sample()
    headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"X-MytpePay-Signature", headers["X-MytpePay-Signature"].encode()))
    response = harness.client.post(URL, content=body, headers=raw)
    assert (response.status_code, response.json()["reason"]) == (400, "malformed_header")


def test_rotation_accepts_old_and_new_secret_and_labels_the_index(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(secrets=(Secret(SECRET), Secret(OLD_SECRET)))
    assert harness.send(secret=OLD_SECRET).json()["status"] == "accepted"
    assert harness.send(secret=SECRET).json()["status"] == "accepted"
    assert harness.value("mytpe_relay_secret_matches_total", secret_index="0") == 1
    assert harness.value("mytpe_relay_secret_matches_total", secret_index="1") == 1


def test_declared_oversize_body_is_refused_unread(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(max_body_bytes=1024)
    body = b'{"x":"' + b"a" * 2000 + b'"}'
    response = harness.post(body, signed_headers(body, timestamp=NOW))
    assert (response.status_code, response.json()["reason"]) == (413, "body_too_large")
    assert harness.value("mytpe_relay_verification_failures_total", reason="body_too_large") == 1


def test_streamed_oversize_body_is_refused(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(max_body_bytes=1024)
    body = b'{"x":"' + b"a" * 2000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    headers = signed_headers(body, timestamp=NOW)
    response = harness.client.post(URL, content=chunks(), headers=headers)
    assert (response.status_code, response.json()["reason"]) == (413, "body_too_large")


def test_kafka_failure_is_503_with_retry_after_and_the_retry_goes_through(harness: Harness) -> None:
    harness.publisher.fail_with = kafka_down()
    first = harness.send(delivery_id="d-3")
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "5"
    assert first.json() == {
        "status": "retry",
        "reason": "unavailable",
        "cause": "kafka_error",
        "detail": "KafkaConnectionError",
    }
    assert harness.value("mytpe_relay_publish_errors_total", reason="kafka_error") == 1
    harness.publisher.fail_with = None
    assert harness.send(delivery_id="d-3").json()["status"] == "accepted"
    assert len(harness.publisher.sent) == 1


def test_pending_publish_keeps_the_claim_until_kafka_settles(make_harness: Callable[..., Harness]) -> None:
    publisher = FakePublisher(leave_pending=True)
    harness = make_harness(publisher, inflight_wait_seconds=0.2)
    first = harness.send(delivery_id="d-4")
    assert (first.status_code, first.json()["cause"]) == (503, "kafka_timeout")
    retry = harness.send(delivery_id="d-4")
    assert (retry.status_code, retry.json()["cause"]) == (503, "in_flight")
    (pending,) = publisher.pending
    harness.client.portal.call(_resolve, pending)  # type: ignore[union-attr]
    after = harness.send(delivery_id="d-4")
    assert after.json()["status"] == "duplicate"


def test_a_quarantine_kafka_acknowledges_late_is_counted_once(make_harness: Callable[..., Harness]) -> None:
    """Review finding: `quarantined_total` counted a DLQ record only when its publish answered in time; one Kafka
    acknowledged late was never counted (its retry is a duplicate), so the quarantine alert missed it."""
    publisher = FakePublisher(leave_pending=True)
    harness = make_harness(publisher, inflight_wait_seconds=0.2)
    body = b"{not json at all"
    first = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="q-9"))
    assert (first.status_code, first.json()["cause"]) == (503, "kafka_timeout")
    assert harness.value("mytpe_relay_quarantined_total", reason="malformed_json") == 0
    harness.client.portal.call(_resolve, publisher.pending[0])  # type: ignore[union-attr]
    assert harness.value("mytpe_relay_quarantined_total", reason="malformed_json") == 1
    retry = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="q-9"))
    assert retry.json()["status"] == "duplicate"
    assert harness.value("mytpe_relay_quarantined_total", reason="malformed_json") == 1


def test_pending_publish_that_fails_releases_the_claim(make_harness: Callable[..., Harness]) -> None:
    publisher = FakePublisher(leave_pending=True)
    harness = make_harness(publisher, inflight_wait_seconds=0.2)
    assert harness.send(delivery_id="d-5").status_code == 503
    harness.client.portal.call(_fail, publisher.pending[0])  # type: ignore[union-attr]
    publisher.leave_pending = False
    assert harness.send(delivery_id="d-5").json()["status"] == "accepted"


def test_a_pending_publish_kafka_refuses_for_good_is_kept_in_the_dlq(make_harness: Callable[..., Harness]) -> None:
    """Review finding: answered 503 `kafka_timeout`, a record Kafka then refused for good (too large once resent
    alone) only had its claim released: if MyTPE had stopped retrying, the body was in neither Kafka nor the DLQ,
    though an answer in time sends the same refusal to the DLQ (guarantees §1, §3)."""
    publisher = RefusingFamily(leave_pending=True)
    harness = make_harness(publisher, inflight_wait_seconds=0.2)
    body, _ = sample(delivery_id="d-big")
    assert (
        harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="d-big")).json()["cause"] == "kafka_timeout"
    )
    publisher.leave_pending = False
    harness.client.portal.call(_refuse, publisher.pending[0])  # type: ignore[union-attr]
    assert [s.topic.rsplit(".", 1)[-1] for s in publisher.sent] == ["dlq"]
    assert dict(publisher.sent[0].headers)["reason"] == b"kafka_refused"
    assert harness.value("mytpe_relay_quarantined_total", reason="kafka_refused") == 1
    publisher.refuse = True  # MyTPE's retry, if any: refused again, and the DLQ has it already
    assert harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="d-big")).json()["status"] == "duplicate"
    assert len(publisher.sent) == 1


def test_a_late_refusal_whose_dlq_publish_is_pending_is_not_said_lost(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    """Review of 565cc9a: a DLQ publish still pending (Kafka slow) was logged as an ERROR, "the DLQ did not take
    it", though its own late acknowledgement then kept and counted it."""
    publisher = FakePublisher(leave_pending=True)
    harness = make_harness(publisher, inflight_wait_seconds=0.2)
    assert harness.send(delivery_id="d-slow").json()["cause"] == "kafka_timeout"
    harness.client.portal.call(_refuse, publisher.pending[0])  # type: ignore[union-attr]
    assert len(publisher.pending) == 2  # the DLQ record, pending in its turn
    harness.client.portal.call(_resolve, publisher.pending[1])  # type: ignore[union-attr]
    assert harness.value("mytpe_relay_quarantined_total", reason="kafka_refused") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@dataclass
class RefusingFamily(FakePublisher):
    """Refuses every family record for good once `refuse` is set; the DLQ takes its records."""

    refuse: bool = False

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if self.refuse and not topic.endswith(".dlq"):
            raise KafkaRefused("MessageSizeTooLargeError")
        return await super().publish(topic, key, value, headers)


def test_a_quarantined_body_never_marks_another_delivery_id_done(make_harness: Callable[..., Harness]) -> None:
    """Review finding: a quarantine was deduplicated on the header's delivery id, which the signature does not
    cover. A signed body the relay quarantines (captured, replayed within the window) sent with the header id of
    a real delivery marked that id done for RELAY_DEDUPE_TTL_SECONDS: the genuine delivery was then answered
    `duplicate` and never published (guarantees §1: `duplicate` only for a delivery whose record was acknowledged).
    A quarantine's key is the header id and the body together; a retry of the same body is still a duplicate."""
    publisher = FakePublisher()
    harness = make_harness(publisher)
    unusable = b'{"delivery_id":"other","event":"transaction.completed"}'  # no data: quarantined
    forged = harness.post(unusable, signed_headers(unusable, timestamp=NOW, delivery_id="victim-1"))
    assert forged.json()["status"] == "quarantined"
    again = harness.post(unusable, signed_headers(unusable, timestamp=NOW, delivery_id="victim-1"))
    assert again.json()["status"] == "duplicate"  # MyTPE's retry of the same delivery
    unroutable = b'{"delivery_id":"other","event":"nothing.routes_this","data":{"x":{"id":"1"}}}'  # read: its own id
    assert harness.post(unroutable, signed_headers(unroutable, timestamp=NOW, delivery_id="victim-1")).json()[
        "status"
    ] == ("quarantined")
    body, _ = sample(delivery_id="victim-1")
    genuine = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="victim-1"))
    assert genuine.json()["status"] == "accepted"
    assert [s.topic.rsplit(".", 1)[-1] for s in publisher.sent] == ["dlq", "dlq", "transaction"]
    other, _ = sample(delivery_id="other")  # the unroutable body's own id was claimed: its delivery is in the DLQ
    assert harness.post(other, signed_headers(other, timestamp=NOW, delivery_id="other")).json()["status"] == (
        "duplicate"
    )


def test_a_delivery_kafka_refused_is_kept_under_its_own_key_so_its_retry_is_a_duplicate(
    make_harness: Callable[..., Harness],
) -> None:
    """Review of fe9e218: a `kafka_refused` quarantine took the quarantine's key, so the delivery's own key was
    left free: once Kafka took the record (its topic's max.message.bytes raised), MyTPE's retry, a file replay or
    a parked copy published it to its family topic beside the DLQ copy (consumers.md: quarantining it claims
    that id). A refusal's quarantine keeps the delivery's own key."""
    publisher = RefusingFamily(refuse=True)
    harness = make_harness(publisher)
    body, _ = sample(delivery_id="d-refused")
    headers = signed_headers(body, timestamp=NOW, delivery_id="d-refused")
    assert harness.post(body, headers).json()["status"] == "quarantined"
    publisher.refuse = False  # the topic takes it now
    assert harness.post(body, headers).json()["status"] == "duplicate"
    assert [s.topic.rsplit(".", 1)[-1] for s in publisher.sent] == ["dlq"]


def test_a_body_without_its_own_id_is_deduplicated_on_itself_not_the_header(
    make_harness: Callable[..., Harness],
) -> None:
    """Review finding (its second form): a body without its own `delivery_id` was deduplicated on the header's,
    which the signature does not cover. Captured and replayed within the window under a real delivery's id, it
    made that delivery a `duplicate` (never published); under a fresh id, it was published again as a new
    event. Its key is the body's digest: MyTPE's retry (the same body) and any replay are duplicates."""
    publisher = FakePublisher()
    harness = make_harness(publisher)
    body = b'{"event":"transaction.completed","data":{"transaction":{"id":"t-1","status":"completed"}}}'
    first = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="h-1"))
    assert (first.json()["status"], first.json()["delivery_id"]) == ("accepted", "h-1")
    replayed = harness.post(body, signed_headers(body, timestamp=NOW, delivery_id="victim-2"))
    assert replayed.json()["status"] == "duplicate"
    genuine, _ = sample(delivery_id="victim-2")
    assert harness.post(genuine, signed_headers(genuine, timestamp=NOW, delivery_id="victim-2")).json()["status"] == (
        "accepted"
    )
    assert len(publisher.sent) == 2


async def _refuse(future: asyncio.Future[Any]) -> None:
    future.set_exception(KafkaRefused("MessageSizeTooLargeError"))
    await asyncio.sleep(0.05)


async def _resolve(future: asyncio.Future[Any]) -> None:
    from relay.types import Ack

    future.set_result(Ack("t", 0, 0))
    await asyncio.sleep(0.05)


async def _fail(future: asyncio.Future[Any]) -> None:
    future.set_exception(RuntimeError("broker gone"))
    await asyncio.sleep(0.05)


def test_every_request_is_one_log_line_with_its_outcome(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    body, delivery_id = sample()
    harness.post(body, signed_headers(body, timestamp=NOW - 1000, delivery_id=delivery_id))
    harness.send(delivery_id="d-logged")
    lines = [r for r in caplog.records if r.name == "relay.requests"]
    assert [(r.levelno, r.__dict__["outcome"], r.__dict__["http_status"]) for r in lines] == [
        (logging.DEBUG, "stale_timestamp", 401),
        (logging.DEBUG, "accepted", 200),
    ]
    assert lines[0].__dict__["delivery_id"] == delivery_id
    sent = harness.publisher.sent[0]
    assert (lines[1].__dict__["topic"], lines[1].__dict__["offset"]) == (sent.topic, 0)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_unavailable_and_quarantined_are_logged_at_warning(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    harness = make_harness(FakePublisher(fail_with=kafka_down()))
    harness.send(delivery_id="d-down")
    body = b'{"event":"transaction.completed","delivery_id":"d-q","data":[1]}'
    make_harness().post(body, signed_headers(body, timestamp=NOW, delivery_id="d-q"))
    lines = [
        (r.levelno, r.__dict__["outcome"], r.__dict__.get("cause"))
        for r in caplog.records
        if r.name == "relay.requests"
    ]
    assert lines == [(logging.WARNING, "unavailable", "kafka_error"), (logging.WARNING, "quarantined", None)]
    # Review finding: the text format (the default) prints the message alone: the 503's cause and the DLQ reason,
    # in the body and the metric label, were missing from it
    messages = [r.getMessage() for r in caplog.records if r.name == "relay.requests"]
    assert messages[0].startswith("503 unavailable delivery=d-down cause=kafka_error"), messages
    assert messages[1].startswith("200 quarantined delivery=d-q reason=missing_data"), messages


def test_health_and_readiness(harness: Harness) -> None:
    assert harness.client.get("/healthz").json() == {"status": "ok"}
    ready = harness.client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert harness.value("mytpe_relay_ready") == 1  # the gauge exists and moves: value() says 0.0 when absent
    harness.publisher.reachable = False
    not_ready = harness.client.get("/readyz")
    assert (not_ready.status_code, not_ready.json()["kafka"]) == (503, False)
    assert harness.value("mytpe_relay_ready") == 0


def test_startup_fails_loudly_without_kafka(settings_factory: Callable[..., Settings]) -> None:
    app = create_app(settings_factory(), publisher=FakePublisher(fail_start=True))
    with pytest.raises(Exception, match="not reachable"), TestClient(app):
        pass
    assert "not reachable" in app.state.startup_error


def test_metrics_scrape_passes_promtool(harness: Harness) -> None:
    promtool = require_tool("promtool")
    harness.send()
    body, _ = sample()
    harness.post(body, signed_headers(body, timestamp=NOW - 1000))
    harness.publisher.fail_with = kafka_down()
    harness.send()
    scrape = harness.client.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape.content, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout == b"" and result.stderr == b""
    for name in (
        "mytpe_relay_request_duration_seconds",
        "mytpe_relay_publish_duration_seconds",
        "mytpe_relay_delivery_lag_seconds",
    ):
        assert f"# TYPE {name} histogram" in scrape.text


def test_dedupe_store_can_be_injected(settings_factory: Callable[..., Settings]) -> None:
    dedupe = MemoryDedupeStore(ttl=60, max_entries=10)
    app = create_app(settings_factory(), publisher=FakePublisher(), dedupe=dedupe, clock=lambda: float(NOW))
    with TestClient(app) as client:
        body = VECTORS[0].body
        headers = signed_headers(body, timestamp=NOW, delivery_id="ignored-header-id")
        assert client.post(URL, content=body, headers=headers).json()["delivery_id"] == (
            "f47ac10b-58cc-4372-a567-0e02b2c3d479"
        )
    assert len(dedupe) == 1


def vector_headers(vector: Any, **changes: str) -> dict[str, str]:
    headers = {
        "X-MytpePay-Signature": vector.signature,
        "X-MytpePay-Timestamp": vector.timestamp,
        "X-MytpePay-Delivery-Id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "X-MytpePay-Event": vector.event,
        "Content-Type": "application/json",
    }
    headers.update(changes)
    return headers


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_vectors_over_http_and_one_changed_byte_each(settings_factory: Callable[..., Settings], vector: Any) -> None:
    settings = settings_factory(secrets=(Secret(vector.secret),))
    metrics = Metrics()
    app = create_app(settings, publisher=FakePublisher(), metrics=metrics, clock=lambda: float(vector.timestamp))
    changed_ts = str(int(vector.timestamp) - 1)
    changed_sig = vector.signature[:-1] + ("0" if vector.signature[-1] != "0" else "1")
    changed_body = vector.body[:50] + bytes([vector.body[50] ^ 0x01]) + vector.body[51:]
    with TestClient(app) as client:
        ok = client.post(URL, content=vector.body, headers=vector_headers(vector))
        assert ok.json()["status"] == "accepted"
        attempts = [
            (vector.body, vector_headers(vector, **{"X-MytpePay-Timestamp": changed_ts})),
            (vector.body, vector_headers(vector, **{"X-MytpePay-Signature": changed_sig})),
            (changed_body, vector_headers(vector)),
        ]
        for body, headers in attempts:
            response = client.post(URL, content=body, headers=headers)
            assert (response.status_code, response.json()["reason"]) == (401, "bad_signature")
        scrape = client.get("/metrics").text
    assert 'mytpe_relay_verification_failures_total{reason="bad_signature",source="default"} 3.0' in scrape
    assert 'mytpe_relay_requests_total{outcome="bad_signature",source="default"} 3.0' in scrape


def test_content_type_is_not_a_reason_to_lose_a_signed_event(harness: Harness) -> None:
    body, delivery_id = sample()
    headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    headers["Content-Type"] = "text/plain; charset=latin-1"
    assert harness.post(body, headers).json()["status"] == "accepted"
