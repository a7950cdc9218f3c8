"""The spool's flow at its bounds (the review of issue 23's spool-flow change): a denied topic, a drain
at shutdown while Kafka is down, a held row at the final flush or whose publish fails oddly, an error
during the shutdown drain. Real SQLite files; publishers are fakes (pure flow logic)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import orjson
import pytest
from starlette.testclient import TestClient

from relay.errors import KafkaDenied, KafkaRefused, PublishPending, Unavailable
from relay.http.app import create_app
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool import drainer as drainer_module
from relay.spool.drainer import BATCH, Drainer
from relay.spool.spool import Spool
from relay.spool.spooler import Spooled, Spooler
from relay.spool.store import FILE, Pending, Row
from relay.types import Ack
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import sample, signed_headers
from tests.spool.test_flow import released

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

DENIED = "mytpe.pay_link"


async def opened(path: Path) -> Spool:
    spool = Spool(path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    return spool


async def abandoned(drainer: Drainer, spool: Spool) -> None:
    """The drain publishes still in flight cancelled (here they never answer), then the spool closed."""
    for task in drainer.sending():
        task.cancel()
    await asyncio.gather(*drainer.sending(), return_exceptions=True)
    await spool.close()


class DenyTopic(FakePublisher):
    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == DENIED:
            raise KafkaDenied("TopicAuthorizationFailedError")
        return await super().publish(topic, key, value, headers)


async def test_a_denied_topic_neither_poisons_kafka_ok_nor_is_spooled_once_known(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    publisher = DenyTopic()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    spooler = Spooler(spool, drainer, publisher, after=1.0)
    spool.kafka_ok = False  # another key's publish just timed out: nothing tells the ACL yet
    assert isinstance(await spooler.publish(DENIED, b"p", b"v", []), Spooled)
    assert isinstance(await spooler.publish("mytpe.transaction", b"t", b"v1", []), Spooled)
    for _ in range(3):
        await drainer.pass_once()
    try:
        assert spool.kafka_ok, "a denied topic's row keeps every delivery in the spool while Kafka answers"
        assert isinstance(await spooler.publish("mytpe.transaction", b"t2", b"v2", []), Ack)
        spool.kafka_ok = False  # even during an outage, a topic known as denied is never 2xx'd
        with pytest.raises(KafkaDenied):
            await spooler.publish(DENIED, b"p2", b"v", [])
        with pytest.raises(KafkaDenied):  # nor a record of the key whose denied row waits in the spool
            await spooler.publish(DENIED, b"p", b"v2", [])
        assert spool.entries == 1  # the denied row waits for the ACL (the operator's to fix)
    finally:
        await spool.close()


async def test_drain_is_bounded_when_a_pass_publish_stays_pending(tmp_path: Path) -> None:
    """SIGTERM (or `spool drain`) while Kafka is down: drain(timeout) returns near its timeout."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", []))
    publisher = FakePublisher(leave_pending=True)  # the drain publish stays in the producer
    drainer = Drainer(spool, publisher, Metrics())
    try:
        left = await asyncio.wait_for(drainer.drain(timeout=0.5), 60)
        assert left == 1 and spool.taken, "the publish in flight keeps its row taken, never sent twice"
        assert len(publisher.pending) == 1
    finally:
        publisher.pending[0].set_exception(Unavailable("kafka_timeout"))
        await drainer.settle(timeout=30)
        await spool.close()


class ShieldedPending(FakePublisher):
    """As KafkaPublisher: the outcome awaits a shielded batch future, so cancelling a waiter leaves the
    record in the producer."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[asyncio.Future[int]] = []

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        batch: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.batches.append(batch)

        async def outcome() -> Ack:
            return Ack(topic, 0, await asyncio.shield(batch))

        raise PublishPending(outcome(), 0.05)


async def test_a_held_row_acked_during_the_final_flush_is_deleted(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    publisher = ShieldedPending()
    drainer = Drainer(spool, publisher, Metrics())
    spooler = Spooler(spool, drainer, publisher, after=0.05)
    assert isinstance(await spooler.publish("mytpe.transaction", b"k", b"v", []), Spooled)
    await spooler.settle_all(timeout=0.05)  # SIGTERM: the first publish did not settle within spool_after
    publisher.batches[0].set_result(7)  # the producer's final flush: Kafka acknowledges the record
    await spooler.settle(timeout=30.0)  # after the flush, before the spool closes
    try:
        assert spool.entries == 0, "Kafka acknowledged the held record, yet it stays on disk: published again"
        assert not spool.held
    finally:
        await spool.close()


async def test_an_unexpected_error_from_a_first_publish_does_not_pin_its_key(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    publisher = FakePublisher(leave_pending=True)
    drainer = Drainer(spool, publisher, Metrics())
    spooler = Spooler(spool, drainer, publisher, after=0.05)
    await spooler.publish("mytpe.transaction", b"k", b"v", [])
    publisher.pending[0].set_exception(RuntimeError("not a KafkaError"))
    await spooler.settle(timeout=30.0)
    try:
        assert not spool.held, "the held row is never settled nor released: key k is blocked for good"
        assert spool.drainable() == 1
    finally:
        await spool.close()


async def test_a_cancelled_sender_still_leaves_its_held_row_followed(tmp_path: Path) -> None:
    """The request is cancelled (client gone, shutdown) after its row became durable and held."""
    spool = await opened(tmp_path)
    publisher = FakePublisher(leave_pending=True)
    drainer = Drainer(spool, publisher, Metrics())
    spooler = Spooler(spool, drainer, publisher, after=0.05)
    sender = asyncio.create_task(spooler.publish("mytpe.transaction", b"k", b"v", []))
    for _ in range(1000):  # bounded: the first publish is pending, and the held put is being written
        if publisher.pending:
            break
        await asyncio.sleep(0)
    sender.cancel()  # while the held put is being written
    await asyncio.gather(sender, return_exceptions=True)
    for _ in range(3000):  # bounded (30 s): the held row's fsync, slow on a busy machine
        if spool.entries:
            break
        await asyncio.sleep(0.01)
    assert spool.entries == 1 and spool.held, "the held row never became durable"
    publisher.pending[0].set_result(Ack("mytpe.transaction", 0, 3))
    await spooler.settle(timeout=30.0)
    try:
        assert spool.entries == 0, "its first publish was acknowledged, yet the held row stays (no follower)"
    finally:
        await spool.close()


def test_an_error_in_the_shutdown_drain_still_flushes_and_closes(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    """SQLite fails the shutdown drain's read: the rest of the shutdown still runs (flush, close).

    The reads fail from before the delivery is spooled, so no drain (the background one included)
    can publish the row first: the shutdown drain meets the error, whatever the scheduling."""
    publisher = FakePublisher(fail_with=kafka_down())
    app = create_app(settings_factory(spool_dir=tmp_path), publisher=publisher, clock=time.time)
    with TestClient(app) as client:
        spool = client.app_state["spool"]
        reads: list[int] = []

        async def broken(limit: int) -> list[Row]:
            reads.append(limit)
            raise sqlite3.OperationalError("disk I/O error")

        spool.heads = broken
        body, delivery_id = sample()
        headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
        assert client.post("/webhooks/mytpe", content=body, headers=headers).json()["spooled"] is True
        publisher.fail_with = None
    assert reads, "no drain met the failing read"
    assert spool.entries == 1
    assert not publisher.started, "the producer was never flushed nor stopped"
    assert spool._executor._shutdown, "the spool was never closed"


async def test_a_drain_ends_once_only_rows_behind_a_stuck_head_are_left(tmp_path: Path) -> None:
    """`spool drain` (or the shutdown drain): a key whose head Kafka and the DLQ refused for good blocks
    its later rows; nothing else to do, so the drain ends instead of sleeping until its timeout."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"head", []))
    await spool.put(Pending("mytpe.transaction", b"k", b"next", []))
    drainer = Drainer(spool, FakePublisher(fail_with=KafkaRefused("MessageSizeTooLargeError")), Metrics())
    try:
        left = await asyncio.wait_for(drainer.drain(timeout=600), 60)
        assert left == 2 and len(spool.stuck) == 1
    finally:
        await spool.close()


async def test_a_put_after_the_spool_closed_answers_instead_of_hanging(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.close()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(spool.put(Pending("mytpe.transaction", b"k", b"v", [])), 10)


async def test_held_rows_and_denied_topics_are_visible_as_gauges(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=metrics)
    await spool.open()
    publisher = DenyTopic(leave_pending=True)
    drainer = Drainer(spool, publisher, metrics, dlq="mytpe.dlq")
    spooler = Spooler(spool, drainer, publisher, after=0.05)
    try:
        assert isinstance(await spooler.publish("mytpe.transaction", b"k", b"v", []), Spooled)  # held
        spool.kafka_ok = False
        assert isinstance(await spooler.publish(DENIED, b"p", b"v", []), Spooled)
        await drainer.pass_once()
        assert metrics.registry.get_sample_value("mytpe_relay_spool_held") == 1
        assert metrics.registry.get_sample_value("mytpe_relay_spool_denied_topics") == 1
    finally:
        publisher.pending[0].set_result(Ack("mytpe.transaction", 0, 1))
        await spooler.settle(timeout=30.0)
        await spool.close()


class RefusedThenDlqDenied(FakePublisher):
    """Refuses key `big` for good on its topic, and denies the relay on the DLQ."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == "mytpe.dlq":
            raise KafkaDenied("TopicAuthorizationFailedError")
        if key == b"big":
            raise KafkaRefused("RecordTooLargeError")
        return await super().publish(topic, key, value, headers)


async def test_a_refused_row_whose_dlq_denies_the_relay_waits_and_the_pass_goes_on(tmp_path: Path) -> None:
    """Review finding: the DLQ's KafkaDenied escaped the pass (only KafkaRefused was caught around the move to the
    DLQ): every pass raised, its acknowledgements uncounted, `kafka_ok` never set again, and `spool drain` ended
    with a traceback. The row now waits for the DLQ's ACL, as a denied topic's rows do."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"big", b"v", []))
    for n in range(5):
        await spool.put(Pending("mytpe.transaction", b"k%d" % n, b"v", []))
    spool.kafka_ok = False  # an outage before
    drainer = Drainer(spool, RefusedThenDlqDenied(), Metrics(), dlq="mytpe.dlq")
    try:
        assert await drainer.pass_once() is True  # five acknowledged, nothing raised
        assert spool.entries == 1 and spool.kafka_ok, "Kafka answered every row: no outage"
        assert "mytpe.dlq" in drainer.denied
    finally:
        await spool.close()


async def test_a_row_whose_topic_or_headers_cannot_be_read_goes_to_the_dlq_and_every_key_drains(
    tmp_path: Path,
) -> None:
    """Review findings: one row whose headers SQLite holds but JSON cannot read, or whose topic is not UTF-8 (the
    file changed on disk), raised out of every pass: no key drained, and `kafka_ok`, False after an outage, was
    never set again. Kept aside instead, it would have held its entity's key, and every later delivery of that
    entity, for good. It now goes to the DLQ as it is, and its key drains on."""
    spool = await opened(tmp_path)
    for key in (b"bad-headers", b"bad-topic", b"good"):
        await spool.put(Pending("mytpe.transaction", key, b"v-" + key, [("content-type", b"json")]))
    await spool.put(Pending("mytpe.transaction", b"bad-headers", b"v-later", []))  # its key's next record
    await spool.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE spool SET headers = x'00ff' WHERE value = ?", (b"v-bad-headers",))
        db.execute("UPDATE spool SET topic = CAST(x'ff6d7974' AS TEXT) WHERE key = ?", (b"bad-topic",))
    db.close()
    spool = await opened(tmp_path)
    spool.kafka_ok = False
    publisher = FakePublisher()
    metrics = Metrics()
    drainer = Drainer(spool, publisher, metrics, dlq="mytpe.dlq")
    try:
        assert await asyncio.wait_for(drainer.drain(timeout=5), 10) == 0
        sent = {(record.topic, record.value): dict(record.headers) for record in publisher.sent}
        assert set(sent) == {
            ("mytpe.dlq", b"v-bad-headers"),
            ("mytpe.dlq", b"v-bad-topic"),
            ("mytpe.transaction", b"v-good"),
            ("mytpe.transaction", b"v-later"),
        }
        assert sent["mytpe.dlq", b"v-bad-headers"]["reason"] == b"spool_damaged"
        assert sent["mytpe.dlq", b"v-bad-headers"]["mytpe-relay-topic"] == b"mytpe.transaction"
        assert "mytpe-relay-topic" not in sent["mytpe.dlq", b"v-bad-topic"]
        # review: the bytes the spool held go with it (the headers a DLQ record needs for replay, say)
        topic, stored = orjson.loads(sent["mytpe.dlq", b"v-bad-headers"]["mytpe-relay-spool-row"])
        assert (bytes.fromhex(topic), bytes.fromhex(stored)) == (b"mytpe.transaction", b"\x00\xff")
        assert orjson.loads(sent["mytpe.dlq", b"v-bad-topic"]["mytpe-relay-spool-row"])[0] == "ff6d7974"
        assert spool.kafka_ok and not spool.stuck
        assert metrics.quarantined.labels("spool_damaged")._value.get() == 2
    finally:
        await spool.close()


class DlqDenied(FakePublisher):
    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == "mytpe.dlq":
            raise KafkaDenied("TopicAuthorizationFailedError")
        return await super().publish(topic, key, value, headers)


async def test_a_damaged_row_whose_dlq_denies_the_relay_denies_the_dlq_not_its_topic(tmp_path: Path) -> None:
    """Review finding: the DLQ's denial of a damaged row was put on the row's own topic, whose new records were
    then answered 503 while the DLQ's ACL was the one to fix."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", [("content-type", b"json")]))
    await spool.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE spool SET headers = x'00ff'")
    db.close()
    spool = await opened(tmp_path)
    drainer = Drainer(spool, DlqDenied(), Metrics(), dlq="mytpe.dlq")
    try:
        await drainer.pass_once()
        assert set(drainer.denied) == {"mytpe.dlq"} and spool.entries == 1
    finally:
        await spool.close()


@pytest.mark.parametrize("changed", [b"v0"], ids=["its-first-row"])
async def test_after_a_row_whose_key_changed_on_disk_leaves_its_key_drains_on(tmp_path: Path, changed: bytes) -> None:
    """Review finding: the table of each key's first row is kept by triggers that find a row's key by its value; a
    key whose stored type changed on disk (text where the spool wrote bytes) matched no entry there when its row
    was deleted, so the key's next rows (already answered 2xx) were never offered again. A later row so changed
    is still skipped by the trigger (docs/guarantees.md §9 says so): made bytes again at the start, a one-byte
    change in the key's index made the start fail (a later review), so that is not done."""
    spool = await opened(tmp_path)
    for n in range(3):
        await spool.put(Pending("mytpe.transaction", b"k", b"v%d" % n, []))
    await spool.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE spool SET key = CAST(key AS TEXT) WHERE value = ?", (changed,))
    db.close()
    spool = await opened(tmp_path)
    publisher = FakePublisher()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        assert await asyncio.wait_for(drainer.drain(timeout=5), 10) == 0
        assert [record.value for record in publisher.sent] == [b"v0", b"v1", b"v2"]  # in order, each once
        assert not spool.holds(b"k")
    finally:
        await spool.close()


async def test_a_damaged_row_with_no_dlq_to_go_to_is_stuck_and_no_outage(tmp_path: Path) -> None:
    """Review finding: a damaged row kept stuck (no DLQ, or the DLQ refused it) answered as an outage: `kafka_ok`
    went False, and every delivery went to the spool, though Kafka answered."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", []))
    await spool.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE spool SET headers = x'00ff'")
    db.close()
    spool = await opened(tmp_path)
    drainer = Drainer(spool, FakePublisher(), Metrics())  # no DLQ
    try:
        await drainer.pass_once()
        assert spool.stuck and spool.kafka_ok
    finally:
        await spool.close()


async def test_a_damaged_size_the_start_counted_otherwise_leaves_the_byte_count_at_zero(tmp_path: Path) -> None:
    """A REAL size of 1e30 swallows the other rows' sizes in the start's SUM: once every row left, the count went
    below 0 (the spool could then hold more than its bound). It stops at 0."""
    spool = await opened(tmp_path)
    for key in (b"a", b"b"):
        await spool.put(Pending("mytpe.transaction", key, b"v" * 1000, []))
    await spool.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE spool SET size = 1e30 WHERE key = ?", (b"a",))
    db.close()
    spool = await opened(tmp_path)
    drainer = Drainer(spool, FakePublisher(), Metrics(), dlq="mytpe.dlq")
    try:
        assert await asyncio.wait_for(drainer.drain(timeout=5), 10) == 0
        assert spool.bytes == 0
    finally:
        await spool.close()


async def test_a_held_record_the_full_spool_refuses_is_answered_with_the_spools_cause(tmp_path: Path) -> None:
    """Review finding: a record whose first publish was not acknowledged within RELAY_SPOOL_AFTER_SECONDS, and
    that the spool then refused (at its cap, or a full disk), was answered 503 `kafka_timeout` and counted so:
    the spool's own cause (`spool_full`, `spool_error`) and its alert stayed quiet. The claim is kept as before
    (PublishPending): the record is still in the producer."""
    spool = Spool(tmp_path, max_bytes=10, metrics=Metrics())  # no room for any record
    await spool.open()
    publisher = FakePublisher(leave_pending=True)
    spooler = Spooler(spool, Drainer(spool, publisher, Metrics()), publisher, after=0.05)
    try:
        with pytest.raises(PublishPending) as raised:
            await spooler.publish("mytpe.transaction", b"k", b"v" * 100, [])
        assert raised.value.cause == "spool_full" and raised.value.retry_after == 30  # the spool's, not Kafka's 5
        raised.value.outcome.close()
    finally:
        publisher.pending[0].set_result(Ack("mytpe.transaction", 0, 0))
        await spooler.settle(timeout=30.0)
        await spool.close()


class TopicGone(FakePublisher):
    """Kafka answers, but a topic it no longer has never takes a record (its metadata wait times out)."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == "gone.transaction":
            raise Unavailable("kafka_timeout")
        return await super().publish(topic, key, value, headers)


@pytest.mark.parametrize("others", [0, 3], ids=["alone", "beside-others"])
async def test_a_row_kafka_never_takes_does_not_mark_kafka_down_for_every_key(tmp_path: Path, others: int) -> None:
    """Review finding: one spooled row for a topic Kafka no longer has (RELAY_TOPIC_PREFIX changed while rows were
    spooled) left every pass unanswered in part, and each pass marked Kafka down: every delivery of every key was
    spooled for as long as that row stayed, while Kafka took everything else. Its key waits; the others go direct."""
    spool = await opened(tmp_path)
    publisher = TopicGone()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    spooler = Spooler(spool, drainer, publisher, after=1.0)
    try:
        await spool.put(Pending("gone.transaction", b"g", b"v", []))
        for n in range(others):
            await spool.put(Pending("mytpe.transaction", b"k%d" % n, b"v", []))
        for _ in range(3):
            spool.kafka_ok = False  # as after an outage
            await drainer.pass_once()
            assert spool.kafka_ok
        assert isinstance(await spooler.publish("mytpe.transaction", b"new", b"v", []), Ack)
        assert spool.entries == 1  # the row of the topic gone waits, retried; its key with it
        publisher.reachable = False  # Kafka really down: a pass nothing answers, and its metadata unanswered
        await drainer.pass_once()
        assert not spool.kafka_ok
    finally:
        await spool.close()


class SlowKey(FakePublisher):
    """One key's partition never answers (a leader gone); every other key's publish is acknowledged."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if key == b"slow":
            await asyncio.Event().wait()
        return await super().publish(topic, key, value, headers)


async def test_a_publish_that_never_settles_does_not_hold_back_the_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a background pass waited for its slowest publish (up to the producer's delivery timeout,
    120 s, or for good): no other key drained meanwhile, though the drain runs across keys at once."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.2)
    spool = await opened(tmp_path)
    drainer = Drainer(spool, SlowKey(), Metrics(), dlq="mytpe.dlq")
    await spool.put(Pending("mytpe.transaction", b"slow", b"v", []))
    drainer.start()
    try:
        for _ in range(100):  # the first pass takes the slow row alone
            if drainer.sending():
                break
            await asyncio.sleep(0.01)
        for n in range(10):
            await spool.put(Pending("mytpe.transaction", b"k%d" % n, b"v", []))
        for _ in range(200):  # bounded: 10 s, fifty times the pass's wait
            if spool.entries == 1:
                break
            await asyncio.sleep(0.05)
        assert spool.entries == 1 and len(drainer.sending()) == 1  # the slow row, still in flight, taken
    finally:
        await drainer.stop(timeout=0.1)
        await abandoned(drainer, spool)


@pytest.mark.parametrize("answer", [KafkaDenied("TopicAuthorizationFailedError"), KafkaRefused("RecordTooLarge")])
async def test_a_held_rows_first_publish_denied_or_refused_later_is_no_outage(
    tmp_path: Path, answer: Exception
) -> None:
    """Review finding: a held row whose first publish Kafka denied (an ACL) marked Kafka down, a KafkaDenied being
    an Unavailable: every delivery of every key went to the spool for at least QUIET_SECONDS more, though Kafka
    had answered. Denied or refused, it answered: as a drain pass counts it."""
    spool = await opened(tmp_path)
    publisher = FakePublisher(leave_pending=True)
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    spooler = Spooler(spool, drainer, publisher, after=0.05)
    try:
        assert isinstance(await spooler.publish(DENIED, b"p", b"v", []), Spooled) and not spool.kafka_ok
        (first,) = publisher.pending
        first.set_exception(answer)
        await released(spool)
        assert not spool.held and spool.kafka_ok
    finally:
        await spool.close()


class NeverAnswers(FakePublisher):
    """The whole cluster down: no publish is answered, and (`reachable`) no metadata either; pings counted."""

    pings: int = 0
    metadata: bool = False  # True: its metadata answers (one broker cut off, not the cluster)

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def ping(self, *, timeout: float = 2.0) -> bool:
        self.pings += 1
        return self.metadata


@pytest.mark.parametrize(
    ("metadata", "cap", "held"),
    [(False, "rows", BATCH), (True, "rows", 2 * BATCH), (True, "bytes", BATCH)],
    ids=["cluster-down", "partition-cut", "partition-cut-bytes"],
)
async def test_passes_that_stop_waiting_keep_a_bounded_number_of_rows_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata: bool, cap: str, held: int
) -> None:
    """Review finding (of the pass's wait bound): each background pass that stopped waiting left its rows taken and
    the next took BATCH more, so a whole-cluster outage put every spooled row in flight, in memory (1,000 of
    1,000 in the review's run). While Kafka is down one BATCH waits, no more; while it answers (its metadata
    here: one partition cut off), up to IN_FLIGHT_ROWS (or IN_FLIGHT_BYTES), so that other keys drain past
    them (the next review: a cap of one BATCH let 200 rows of a partition that never answers stop every other
    key; the one after: a cap of bytes alone let every row of an outage's spool in flight again)."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.01)
    if cap == "rows":
        monkeypatch.setattr(drainer_module, "IN_FLIGHT_ROWS", BATCH + 1)  # past it after the second pass
    else:
        monkeypatch.setattr(drainer_module, "IN_FLIGHT_BYTES", 1)  # past it after the first pass
    monkeypatch.setattr(NeverAnswers, "metadata", metadata)
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.put(Pending("mytpe.transaction", b"k%d" % n, b"v", [])) for n in range(3 * BATCH)))
    drainer = Drainer(spool, NeverAnswers(), Metrics(), dlq="mytpe.dlq")
    try:
        for _ in range(5):
            await drainer.pass_once()
        assert len(drainer.sending()) == len(spool.taken) == held
    finally:
        await abandoned(drainer, spool)


async def test_other_keys_drain_past_a_batch_of_publishes_that_never_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: with at most a BATCH in flight, 200 keys on a partition that never answers (a broker cut off,
    still its leader) took every slot, and no other key drained. A key of a partition that answers drains past
    them while the bytes in flight are under IN_FLIGHT_BYTES."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.01)
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.put(Pending("cut.transaction", b"k%d" % n, b"v", [])) for n in range(2 * BATCH)))
    await spool.put(Pending("mytpe.transaction", b"fast", b"v", []))
    publisher = CutTopic()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        for _ in range(5):
            await drainer.pass_once()
        assert [sent.key for sent in publisher.sent] == [b"fast"] and spool.entries == 2 * BATCH
    finally:
        await abandoned(drainer, spool)


class CutTopic(FakePublisher):
    """The partitions of `cut.transaction` never answer; the others do."""

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == "cut.transaction":
            await asyncio.Event().wait()
        return await super().publish(topic, key, value, headers)


async def test_a_drain_to_a_deadline_does_not_ask_kafkas_metadata_past_it(tmp_path: Path) -> None:
    """Review finding: a pass cut at the drain's deadline with no row answered then asked Kafka's metadata, for up
    to 2 s more, past RELAY_SPOOL_DRAIN_SECONDS (SIGTERM while Kafka is down; `spool drain --timeout`), which the
    stop bound and the chart's grace period do not count. At a deadline, no row answered is Kafka down."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", []))
    publisher = NeverAnswers()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        spool.kafka_ok = True
        await drainer.pass_once(timeout=0.2)
        assert publisher.pings == 0 and not spool.kafka_ok
    finally:
        await abandoned(drainer, spool)


class OneSlow(FakePublisher):
    """Key `a` acknowledged at once, key `b` once `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if key == b"b":
            await self.go.wait()
        return await super().publish(topic, key, value, headers)


async def test_a_pass_does_not_mark_kafka_up_over_a_failure_seen_since_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a pass whose one row was acknowledged early marked Kafka up at its end, over a direct
    publish's failure seen meanwhile (the cluster gone since): the next deliveries each waited
    RELAY_SPOOL_AFTER_SECONDS, held. A failure seen since the pass began is fresher, and stands."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.3)
    spool = await opened(tmp_path)
    for key in (b"a", b"b"):
        await spool.put(Pending("mytpe.transaction", key, b"v", []))
    publisher = OneSlow()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        passing = asyncio.create_task(drainer.pass_once())
        for _ in range(100):  # until `a` is acknowledged (bounded: 1 s)
            if publisher.sent:
                break
            await asyncio.sleep(0.01)
        spool.mark_kafka(False)  # a direct publish failed: the cluster is gone
        assert await passing
        assert not spool.kafka_ok
    finally:
        publisher.go.set()
        await drainer.settle(timeout=5)
        await spool.close()


class FailsLate(FakePublisher):
    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        await self.go.wait()
        raise RuntimeError("an error no outcome names")


async def test_a_drain_publish_that_fails_after_its_pass_stopped_waiting_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: an error of a drain publish the pass no longer waited for was never retrieved (asyncio's
    'Task exception was never retrieved', at garbage collection); before the wait bound, the pass raised it."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.01)
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", []))
    publisher = FailsLate()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        assert not await drainer.pass_once()
        (task,) = drainer.sending()
        publisher.go.set()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks
        assert "spool drain: record 1 failed: RuntimeError: an error no outcome names" in caplog.text
        assert spool.entries == 1 and not spool.taken  # released, drained again later
    finally:
        await spool.close()


async def test_deliveries_marking_kafka_down_for_a_cut_partition_do_not_stop_the_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding (of the cap while Kafka is down): one broker cut off, still its leader, the cluster answering
    metadata: each new delivery of its partition timed out and marked Kafka down, and with 200 of its rows in
    flight no pass ran, so no other key drained for as long as the cut lasted. What decides is whether Kafka
    answered the last pass, not a delivery's mark."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.01)
    monkeypatch.setattr(NeverAnswers, "metadata", True)  # the cluster answers: only the cut partition does not
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.put(Pending("cut.transaction", b"k%d" % n, b"v", [])) for n in range(250)))
    publisher = CutTopic()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    try:
        await drainer.pass_once()
        await drainer.pass_once()
        assert len(drainer.sending()) == 250
        for n in range(5):
            await spool.put(Pending("mytpe.transaction", b"f%d" % n, b"v", []))
        spool.mark_kafka(False)  # a new delivery of the cut partition timed out
        await drainer.pass_once()
        assert sorted(sent.key for sent in publisher.sent) == [b"f%d" % n for n in range(5)]
    finally:
        await abandoned(drainer, spool)


async def test_while_kafka_is_unreachable_at_most_a_batch_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: while Kafka was down a pass could start with 199 rows in flight and add 200 (the docs said
    one batch). It takes what is left of a BATCH."""
    monkeypatch.setattr(drainer_module, "PASS_SECONDS", 0.01)
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.put(Pending("mytpe.transaction", b"a%d" % n, b"v", [])) for n in range(150)))
    drainer = Drainer(spool, NeverAnswers(), Metrics(), dlq="mytpe.dlq")
    try:
        await drainer.pass_once()
        assert len(drainer.sending()) == 150 and not spool.kafka_ok
        await asyncio.gather(*(spool.put(Pending("mytpe.transaction", b"b%d" % n, b"v", [])) for n in range(300)))
        await drainer.pass_once()
        assert len(drainer.sending()) == BATCH
    finally:
        await abandoned(drainer, spool)


class BrokenTracer:
    """A tracer whose drain span cannot be made (a processor of the provider's that raises, say)."""

    def drain(self, topic: str, headers: Sequence[tuple[str, bytes]], *, row: int) -> None:
        raise RuntimeError("a span processor failed")


async def test_a_drain_span_that_cannot_be_made_neither_pins_its_row_nor_stops_the_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the drain's span was made before the publish's `finally` that releases the row, so a tracer
    that raised there left the row taken for as long as the process ran, and its key's later records on disk,
    each answered 2xx. Tracing never decides whether a record drains: it goes untraced, with the headers it was
    spooled with."""
    spool = await opened(tmp_path)
    await spool.put(Pending("mytpe.transaction", b"k", b"v", [("traceparent", b"spooled")]))
    publisher = FakePublisher()
    drainer = Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq")
    drainer.tracer = cast("Tracer", BrokenTracer())
    try:
        assert await drainer.pass_once()
        assert spool.entries == 0 and not spool.taken
        assert [sent.headers for sent in publisher.sent] == [[("traceparent", b"spooled")]]
        assert "spool drain: record 1 sent untraced: RuntimeError: a span processor failed" in caplog.text
    finally:
        await spool.close()
