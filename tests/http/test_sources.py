"""Sources over HTTP (fake publisher): the path names the source, only its secrets verify, a bad signature
is parked and relayed once the source's secrets change, the rotation window answers 503."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.metrics import Metrics
from relay.settings import Settings
from tests.fakes import FakePublisher
from tests.helpers import sample, signed_headers

SHOP = "whsec_" + "1" * 48
KIOSK = "whsec_" + "2" * 48
NEW = "whsec_" + "3" * 48


class Bed:
    def __init__(self, client: TestClient, publisher: FakePublisher, metrics: Metrics, file: Path) -> None:
        self.client = client
        self.publisher = publisher
        self.metrics = metrics
        self.file = file

    def send(
        self,
        path: str,
        secret: str,
        *,
        delivery_id: str | None = None,
        body: bytes | None = None,
        timestamp: int | None = None,
    ) -> Any:
        if body is None:
            body, delivery_id = sample(delivery_id=delivery_id)
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = signed_headers(body, secret=secret, timestamp=timestamp, delivery_id=delivery_id)
        return self.client.post(path, content=body, headers=headers)

    def value(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample_ in family.samples:
                if sample_.name == name and sample_.labels == labels:
                    return sample_.value
        return 0.0

    def write(self, text: str) -> None:
        self.file.write_text(text)

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.05)


def sources_yaml(**secrets: list[str]) -> str:
    return "sources:\n" + "".join(f"  - {{name: {name}, secrets: [{', '.join(s)}]}}\n" for name, s in secrets.items())


@pytest.fixture
def make_bed(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Callable[..., Bed]]:
    clients: list[TestClient] = []

    def make(text: str | None = None, **overrides: Any) -> Bed:
        file = tmp_path / "sources.yaml"
        file.write_text(text or sources_yaml(shop=[SHOP], kiosk=[KIOSK]))
        options: dict[str, Any] = {"secrets": (), "sources_file": file, "sources_poll_seconds": 0.1}
        settings = settings_factory(**{**options, **overrides})
        publisher, metrics = FakePublisher(), Metrics()
        client = TestClient(create_app(settings, publisher=publisher, metrics=metrics), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Bed(client, publisher, metrics, file)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_each_source_at_its_path_with_its_own_secret(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    assert bed.send("/webhooks/mytpe/shop", SHOP).status_code == 200
    assert bed.send("/webhooks/mytpe/kiosk", KIOSK).status_code == 200
    assert [dict(s.headers)["mytpe-relay-source"] for s in bed.publisher.sent] == [b"shop", b"kiosk"]
    assert bed.value("mytpe_relay_requests_total", source="shop", outcome="accepted") == 1
    assert bed.value("mytpe_relay_secret_matches_total", source="kiosk", secret_index="0") == 1


def test_one_sources_secret_does_not_verify_another(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    response = bed.send("/webhooks/mytpe/kiosk", SHOP)
    assert (response.status_code, response.json()["reason"]) == (401, "bad_signature")
    assert bed.publisher.sent == []
    assert bed.value("mytpe_relay_verification_failures_total", source="kiosk", reason="bad_signature") == 1


@pytest.mark.parametrize("path", ["/webhooks/mytpe/nope", "/webhooks/mytpe", "/webhooks/mytpe/shop/x"])
def test_a_path_with_no_source_is_404_unknown_source(make_bed: Callable[..., Bed], path: str) -> None:
    bed = make_bed()
    response = bed.send(path, SHOP)
    assert response.status_code == 404
    detail = "no source is served at this path"
    assert response.json() == {"status": "rejected", "reason": "unknown_source", "detail": detail}
    assert bed.value("mytpe_relay_requests_total", source="unknown", outcome="unknown_source") == 1
    assert 'source="nope"' not in bed.client.get("/metrics").text  # a label never comes from the path


def test_the_environment_source_stays_at_the_base_path(make_bed: Callable[..., Bed]) -> None:
    from relay.settings import Secret

    bed = make_bed(secrets=(Secret(NEW),))
    assert bed.send("/webhooks/mytpe", NEW).status_code == 200
    assert bed.send("/webhooks/mytpe/shop", NEW).status_code == 401


def test_an_instance_id_must_match(make_bed: Callable[..., Bed]) -> None:
    text = f"sources:\n  - {{name: shop, secrets: [{SHOP}], instance_id: abc123-def456}}\n"
    text += f"  - {{name: kiosk, secrets: [{KIOSK}], instance_id: other}}\n"
    bed = make_bed(text)
    assert bed.send("/webhooks/mytpe/shop", SHOP).status_code == 200  # samples come from instance abc123-def456
    response = bed.send("/webhooks/mytpe/kiosk", KIOSK)
    assert (response.status_code, response.json()["reason"]) == (401, "wrong_instance")
    assert len(bed.publisher.sent) == 1
    assert bed.value("mytpe_relay_verification_failures_total", source="kiosk", reason="wrong_instance") == 1


def test_a_body_with_no_instance_is_relayed_by_a_source_that_names_one(make_bed: Callable[..., Bed]) -> None:
    """Review finding: a source with an instance_id refused 401 `wrong_instance`, kept nowhere, a correctly signed
    body that names no instance (MyTPE's docs do not show whether pay_link.* bodies carry `data.instance`; the
    newer API's trader.* events belong to no instance). The secret is the instance's: a body naming none
    contradicts nothing, and is relayed. One naming another instance, or one the relay cannot read, is still
    refused (review of the fix: it relayed `{"id": ""}` too)."""
    text = f"sources:\n  - {{name: shop, secrets: [{SHOP}], instance_id: abc123-def456}}\n"
    bed = make_bed(text + f"  - {{name: kiosk, secrets: [{KIOSK}]}}\n")
    body, delivery_id = sample("pay_link.deleted")
    document = orjson.loads(body)
    del document["data"]["instance"]
    response = bed.send("/webhooks/mytpe/shop", SHOP, delivery_id=delivery_id, body=orjson.dumps(document))
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    (record,) = bed.publisher.sent
    assert orjson.loads(record.value)["id"] == delivery_id
    nothings: list[object] = [None, [], {}]
    for n, nothing in enumerate(nothings):  # as PHP writes no instance (review of the fix)
        document["data"]["instance"], document["delivery_id"] = nothing, f"{delivery_id}-e{n}"
        empty = bed.send("/webhooks/mytpe/shop", SHOP, delivery_id=f"{delivery_id}-e{n}", body=orjson.dumps(document))
        assert (empty.status_code, empty.json()["status"]) == (200, "accepted"), nothing
    for n, instance in enumerate([{"id": "other"}, {"id": ""}, {"id": 1.5}, "abc123-def456"]):
        document["data"]["instance"] = instance  # another instance, or one the relay cannot read: refused
        refused = bed.send("/webhooks/mytpe/shop", SHOP, delivery_id=f"{delivery_id}-{n}", body=orjson.dumps(document))
        assert (refused.status_code, refused.json()["reason"]) == (401, "wrong_instance"), instance


def test_parked_then_relayed_once_when_the_new_secret_arrives(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    body, delivery_id = sample()
    attempts = []
    now = int(time.time())
    for attempt in range(3):  # MyTPE's three attempts, each signed with the new secret the relay lacks
        sent_at = now - 2 + attempt  # a timestamp each, so a signature each: one entry all the same, each
        # attempt's signature kept in it
        response = bed.send("/webhooks/mytpe/shop", NEW, delivery_id=delivery_id, body=body, timestamp=sent_at)
        attempts.append(response.status_code)
    forged = bed.send("/webhooks/mytpe/shop", "whsec_" + "f" * 48)
    assert attempts == [401, 401, 401] and forged.status_code == 401
    assert bed.value("mytpe_relay_parked_total", source="shop") == 4
    assert bed.publisher.sent == []
    bed.write(sources_yaml(shop=[NEW, SHOP], kiosk=[KIOSK]))
    bed.wait(lambda: bed.value("mytpe_relay_reverified_total", source="shop") == 1)
    bed.wait(lambda: bed.value("mytpe_relay_parked_entries") == 1)  # the forgery stays parked until it ages out
    (record,) = bed.publisher.sent
    headers = dict(record.headers)
    assert headers["mytpe-relay-reverified"] == b"true" and headers["mytpe-relay-source"] == b"shop"
    event = orjson.loads(record.value)
    assert event["id"] == delivery_id and event["mytpereverified"] is True
    assert bed.value("mytpe_relay_duplicates_total", source="shop") == 0  # the three attempts were one entry
    assert bed.send("/webhooks/mytpe/shop", NEW, delivery_id=delivery_id, body=body).json()["status"] == "duplicate"


def test_a_delivery_kept_for_a_mistyped_instance_id_is_relayed_once_the_id_alone_is_corrected(
    make_bed: Callable[..., Bed],
) -> None:
    """Review finding: an entry kept parked because it verified but was refused `wrong_instance` was verified
    again only when the source's secrets changed; a reload that corrected the instance_id alone marked nothing,
    and the entry aged out. A changed instance_id now has parked requests verified again too."""
    bed = make_bed()
    response = bed.send("/webhooks/mytpe/shop", NEW)  # signed with the new secret the relay lacks: parked
    assert response.status_code == 401 and bed.value("mytpe_relay_parked_total", source="shop") == 1
    mistyped = f"sources:\n  - {{name: shop, secrets: [{NEW}, {SHOP}], instance_id: abc123-def465}}\n"
    bed.write(mistyped + f"  - {{name: kiosk, secrets: [{KIOSK}]}}\n")  # the new secret, and a typo
    bed.wait(lambda: bed.value("mytpe_relay_config_generation") == 2)
    # The attendant's pass for that change (the gauge is set by a pass): verified, refused for its instance, kept.
    bed.wait(lambda: bed.value("mytpe_relay_parked_entries") == 1)
    assert bed.publisher.sent == []
    bed.write(mistyped.replace("abc123-def465", "abc123-def456") + f"  - {{name: kiosk, secrets: [{KIOSK}]}}\n")
    bed.wait(lambda: bed.value("mytpe_relay_reverified_total", source="shop") == 1)
    assert len(bed.publisher.sent) == 1 and bed.value("mytpe_relay_parked_entries") == 0


def test_a_regeneration_applied_late_still_relays_the_attempt_signed_with_the_installed_secret(
    make_bed: Callable[..., Bed],
) -> None:
    # review finding 1: attempt 1 signed with NEW (what rotate installs), a late regenerate lands, and
    # attempt 2 is signed with a secret nobody holds; it must not push attempt 1 out
    bed = make_bed()
    body, delivery_id = sample()
    now = int(time.time())
    nobody = "whsec_" + "c" * 48
    for attempt, secret in enumerate((NEW, nobody)):
        response = bed.send(
            "/webhooks/mytpe/shop", secret, delivery_id=delivery_id, body=body, timestamp=now - 2 + attempt
        )
        assert response.status_code == 401
    bed.write(sources_yaml(shop=[NEW, SHOP], kiosk=[KIOSK]))
    bed.wait(lambda: bed.value("mytpe_relay_reverified_total", source="shop") == 1)
    bed.wait(lambda: bed.value("mytpe_relay_parked_entries") == 0)
    (record,) = bed.publisher.sent
    assert orjson.loads(record.value)["id"] == delivery_id


def test_the_rotation_window_answers_503_with_retry_after(make_bed: Callable[..., Bed]) -> None:
    text = f"sources:\n  - {{name: shop, secrets: [{SHOP}], rotation_window_until: '2999-01-01T00:00:00Z'}}\n"
    bed = make_bed(text, rotation_retry_after_seconds=45)
    response = bed.send("/webhooks/mytpe/shop", NEW)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "45"
    assert response.json()["reason"] == "rotation_window"
    assert bed.value("mytpe_relay_parked_total", source="shop") == 1
    assert bed.send("/webhooks/mytpe/shop", SHOP).status_code == 200  # the current secret still verifies


def test_a_flood_on_one_source_pushes_out_its_own_oldest_and_leaves_the_others_alone(
    make_bed: Callable[..., Bed],
) -> None:
    bed = make_bed(parking_max_per_source=5, parking_rate_per_source=1.0, parking_burst=5)  # rate: accepted, unused
    statuses = {bed.send("/webhooks/mytpe/shop", NEW).status_code for _ in range(20)}
    assert statuses == {401}
    assert bed.value("mytpe_relay_parked_total", source="shop") == 20  # parked, never refused for rate
    assert bed.value("mytpe_relay_parking_refused_total", source="shop", reason="rate_limited") == 0
    assert bed.send("/webhooks/mytpe/kiosk", "whsec_" + "9" * 48).status_code == 401
    assert bed.value("mytpe_relay_parked_total", source="kiosk") == 1
    bed.wait(lambda: bed.value("mytpe_relay_parked_evicted_total", source="shop") == 15, timeout=30)
    assert bed.value("mytpe_relay_parked_entries") == 6
    assert bed.value("mytpe_relay_parked_evicted_total", source="kiosk") == 0


def test_a_reload_that_removes_a_source_removes_its_path_and_series(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    bed.write(sources_yaml(shop=[SHOP]))
    bed.wait(lambda: bed.value("mytpe_relay_config_generation") == 2)
    assert bed.send("/webhooks/mytpe/kiosk", KIOSK).status_code == 404
    assert 'source="kiosk"' not in bed.client.get("/metrics").text
