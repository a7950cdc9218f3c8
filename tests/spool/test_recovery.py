"""The recovery check (RELAY_SPOOL_RECOVERY_CHECK) on the real broker and real SQLite files: a process that
dies after Kafka wrote a drain pass and before its deletes leaves those rows; the next start with the check
drops them instead of publishing them again, and without it publishes them twice (at-least-once)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from localkafka import LocalKafka

from relay.errors import KafkaRefused, Unavailable
from relay.kafka import topics
from relay.kafka.publisher import KafkaPublisher
from relay.kafka.readback import KafkaFinder
from relay.metrics import Metrics
from relay.ops.spool import drain
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.recovery import Recovery
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer
from relay.types import Ack
from tests.servers import free_port, read_topic
from tests.spool.test_flow import readonly

KEYS = 12
PER_KEY = 3


class DiesAfterKafka:
    """Publishes for real, then never returns: Kafka holds the record, the process 'dies' before its delete."""

    def __init__(self, real: KafkaPublisher, expected: int) -> None:
        self.real = real
        self.written = 0
        self.expected = expected
        self.all_written = asyncio.Event()

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        await self.real.publish(topic, key, value, headers)
        self.written += 1
        if self.written == self.expected:
            self.all_written.set()
        await asyncio.Event().wait()  # killed here: acknowledged, never deleted
        raise AssertionError("unreachable")

    async def ping(self, *, timeout: float = 2.0) -> bool:
        return True

    async def start(self, *, timeout: float, background: bool = False) -> None:
        return None

    async def stop(self, *, timeout: float = 10.0) -> None:
        return None


async def make_topic(bootstrap: str) -> str:
    topic = f"rec{uuid.uuid4().hex[:8]}.transaction"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    return topic


def publisher(kafka: LocalKafka, topic: str) -> KafkaPublisher:
    return KafkaPublisher(bootstrap_servers=[kafka.bootstrap], publish_timeout=10, topics=[topic])


def traced() -> Tracer:
    """A tracer whose spans go nowhere: a drain then writes this hop's `traceparent` on every record it sends."""
    return Tracer.build(TracingConfig(ratio=1.0))


async def killed_mid_pass(
    kafka: LocalKafka, directory: Path, topic: str, *, check: bool, tracer: Tracer | None = None
) -> None:
    """Spool KEYS x PER_KEY records; one drain pass (a head per key) is written by Kafka, then the process dies."""
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    for n in range(PER_KEY):
        for k in range(KEYS):
            value = json.dumps({"id": f"e-{k}-{n}"}).encode()
            parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode()  # as a traced webhook spools it
            headers = [("content-type", b"json"), *([("traceparent", parent)] if tracer else [])]
            await spool.put(Pending(topic, b"key-%d" % k, value, headers))
    real = publisher(kafka, topic)
    await real.start(timeout=30)
    dying = DiesAfterKafka(real, KEYS)
    drainer = Drainer(spool, dying, Metrics())
    drainer.tracer = tracer
    if check:
        drainer.recovery = Recovery(KafkaFinder([kafka.bootstrap]), Metrics())
    drainer.start()
    await asyncio.wait_for(dying.all_written.wait(), 60)
    await drainer.stop(timeout=0.1)
    sends = list(drainer._sending.values())
    for send in sends:  # the process is gone: nothing after Kafka's acknowledgement runs
        send.cancel()
    await asyncio.gather(*sends, return_exceptions=True)
    await real.stop(timeout=10)
    await spool.close()


async def restarted(
    kafka: LocalKafka, directory: Path, topic: str, *, check: bool, tracer: Tracer | None = None
) -> Metrics:
    metrics = Metrics()
    spool = Spool(directory, max_bytes=10_000_000, metrics=metrics)
    await spool.open()
    assert spool.entries == KEYS * PER_KEY  # nothing was deleted before the kill
    real = publisher(kafka, topic)
    await real.start(timeout=30)
    drainer = Drainer(spool, real, metrics)
    drainer.tracer = tracer
    if check:
        drainer.recovery = Recovery(KafkaFinder([kafka.bootstrap]), metrics)
    try:
        assert await drainer.drain(timeout=60) == 0
    finally:
        await real.stop(timeout=10)
        await spool.close()
    return metrics


def found_in_kafka(metrics: Metrics) -> float:
    return float(metrics.spool_found_in_kafka._value.get())


async def written(kafka: LocalKafka, topic: str) -> Counter[str]:
    return Counter(json.loads(r.value)["id"] for r in await read_topic(kafka.bootstrap, topic))


@pytest.mark.parametrize("check", [True, False])
async def test_a_pass_killed_after_kafka_wrote_it_is_not_published_again_with_the_check(
    kafka: LocalKafka, tmp_path: Path, check: bool
) -> None:
    """Without the check (today's behaviour) the KEYS records of the killed pass are written twice."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=check)
    metrics = await restarted(kafka, tmp_path, topic, check=check)
    ids = await written(kafka, topic)
    assert sorted(ids) == sorted(f"e-{k}-{n}" for k in range(KEYS) for n in range(PER_KEY))  # none lost
    twice = sorted(i for i, count in ids.items() if count > 1)
    if check:
        assert twice == []
        assert found_in_kafka(metrics) == KEYS
    else:
        assert twice == sorted(f"e-{k}-0" for k in range(KEYS))
        assert found_in_kafka(metrics) == 0


async def test_with_tracing_on_a_pass_killed_after_kafka_wrote_it_is_not_published_again(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Review finding: with a tracer, a drain sends each record with this hop's `traceparent` in place of the one
    it was spooled with, and the check compared the headers exactly: it found none, and the KEYS records of the
    killed pass were written twice, where docs/guarantees.md §9 says they are not."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=True, tracer=traced())
    metrics = await restarted(kafka, tmp_path, topic, check=True, tracer=traced())
    ids = await written(kafka, topic)
    assert sorted(ids) == sorted(f"e-{k}-{n}" for k in range(KEYS) for n in range(PER_KEY))  # none lost
    assert sorted(i for i, count in ids.items() if count > 1) == []
    assert found_in_kafka(metrics) == KEYS


async def test_the_check_given_up_for_good_drains_the_rows_again(kafka: LocalKafka, tmp_path: Path) -> None:
    """A finder that cannot answer for good (here: a bound of 0 records read) never blocks the drain."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=True)
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    real = publisher(kafka, topic)
    await real.start(timeout=30)
    drainer = Drainer(spool, real, Metrics())
    drainer.recovery = Recovery(KafkaFinder([kafka.bootstrap], limit=0), Metrics())
    try:
        assert await drainer.drain(timeout=60) == 0
    finally:
        await real.stop(timeout=10)
        await spool.close()
    ids = await written(kafka, topic)
    assert len(ids) == KEYS * PER_KEY and sum(ids.values()) == KEYS * PER_KEY + KEYS  # at-least-once


async def test_a_topic_that_does_not_exist_holds_none_of_the_records(kafka: LocalKafka) -> None:
    """A pass sent before its topic existed: nothing to find, and nothing given up."""
    finder = KafkaFinder([kafka.bootstrap])
    absent = f"rec{uuid.uuid4().hex[:8]}.transaction"
    assert await finder.present(absent, [(b"k", b"v", ())], 0.0) == set()


async def test_the_check_waits_for_kafka_without_failing_a_drain(kafka: LocalKafka, tmp_path: Path) -> None:
    """Kafka unreachable at the check (a SIGTERM drain, `spool drain`): nothing is drained, nothing raised."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=True)
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    drainer = Drainer(spool, publisher(kafka, topic), Metrics())
    drainer.recovery = Recovery(KafkaFinder([f"127.0.0.1:{free_port()}"]), Metrics())  # nothing listens
    try:
        assert await drainer.drain(timeout=3) == KEYS * PER_KEY
    finally:
        await spool.close()
    assert not drainer.recovery.checked


async def test_a_drain_ends_at_its_deadline_while_a_broker_does_not_answer_the_check(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Review finding: the check was not bounded by the drain's time left, so a SIGTERM drain (or `spool drain`)
    facing a broker that accepts and never answers waited for the finder's own bound (60 s), past
    RELAY_SPOOL_DRAIN_SECONDS. Now it is cut there, and the rows stay spooled for the next start."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=True)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, read, never answered

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    drainer = Drainer(spool, publisher(kafka, topic), Metrics())
    drainer.recovery = Recovery(KafkaFinder([f"127.0.0.1:{port}"]), Metrics())
    try:
        async with asyncio.timeout(30):  # the finder's bound is 60 s: a drain that waits for it fails here
            assert await drainer.drain(timeout=2) == KEYS * PER_KEY
    finally:
        await spool.close()
        for writer in held:
            writer.close()
        server.close()
    assert not drainer.recovery.checked


async def test_a_record_is_found_only_with_its_own_headers(kafka: LocalKafka) -> None:
    """A DLQ record's value is the raw body: two records of one delivery (quarantined directly, then
    re-verified and quarantined again) differ only in their headers. Matching on key and value alone
    would drop the second, spooled one as "already in Kafka" while Kafka holds only the first."""
    topic = await make_topic(kafka.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"raw body", key=b"delivery-1", headers=[("reason", b"bad_json")])
    finally:
        await producer.stop()
    finder = KafkaFinder([kafka.bootstrap])
    first = (b"delivery-1", b"raw body", (("reason", b"bad_json"),))
    second = (b"delivery-1", b"raw body", (("reason", b"bad_json"), ("mytpe-relay-reverified", b"true")))
    assert await finder.present(topic, [first, second], 0.0) == {first}


async def test_a_partition_with_no_leader_yet_is_asked_again_not_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker restarting (often the event that killed the relay) leaves a partition leaderless past the
    metadata bound: that is "ask again before the next pass", not "give the check up and republish"."""

    async def leaderless(*_: object, **__: object) -> object:
        raise topics.TopicUnreadable("LeaderNotAvailableError, still after 10s", retriable=True)

    async def refused(*_: object, **__: object) -> object:
        raise topics.TopicUnreadable("TopicAuthorizationFailedError (not retriable)")

    finder = KafkaFinder(["127.0.0.1:1"])
    monkeypatch.setattr(finder, "_partitions", leaderless)
    with pytest.raises(Unavailable):
        await finder.present("t.transaction", [(b"k", b"v", ())], 0.0)
    monkeypatch.setattr(finder, "_partitions", refused)
    with pytest.raises(KafkaRefused):
        await finder.present("t.transaction", [(b"k", b"v", ())], 0.0)


async def test_spool_drain_counts_what_the_check_found_apart_from_what_it_published(
    kafka: LocalKafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding: `spool drain` counted every row that left the spool as published, the rows the recovery
    check found in Kafka already (removed, not sent again) among them."""
    topic = await make_topic(kafka.bootstrap)
    await killed_mid_pass(kafka, tmp_path, topic, check=True)
    env = {
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "RELAY_MYTPE_SECRETS": "whsec_" + "ab" * 24,
        "RELAY_SPOOL_DIR": str(tmp_path),
        "RELAY_SPOOL_RECOVERY_CHECK": "true",
    }
    assert await drain(Settings.from_env(env), tmp_path, 60) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == (
        f"spool {tmp_path}: {KEYS * PER_KEY - KEYS} record(s) published, {KEYS} found in Kafka already (removed,"
        " not published again), 0 left"
    )
    assert sorted(i for i, count in (await written(kafka, topic)).items() if count > 1) == []


async def test_rows_found_in_kafka_are_counted_when_their_delete_fails(tmp_path: Path) -> None:
    """Review of the above: the rows the check found were counted only when their first delete succeeded; one
    retried (undeleted, never published again) was counted nowhere, and `spool drain` said fewer found."""
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=metrics)
    await spool.open()
    for n in range(2):
        await spool.put(Pending("t", b"k%d" % n, b"v", []))
    rows = await spool.heads(10)
    readonly(spool, True)
    await Recovery(KafkaFinder(["127.0.0.1:9"]), metrics)._drop(spool, rows, len(rows))
    assert found_in_kafka(metrics) == 2 and len(spool.undeleted) == 2
    readonly(spool, False)
    assert await spool.retry_deletes() and spool.entries == 0
    await spool.close()
