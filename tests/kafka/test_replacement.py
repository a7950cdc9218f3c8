"""Replacing a broken producer: a replacement that cannot even be made leaves the next failure to retry."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaError, ProducerClosed

from relay.errors import StartupError, Unavailable
from relay.kafka import connection as connection_module
from relay.kafka.batching import Stalled
from relay.kafka.connection import Connection
from relay.kafka.publisher import KafkaPublisher
from relay.settings import ConfigError
from tests.conftest import make_settings


class FakeProducer:
    """What `_swap` and `_quiet_stop` call."""

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.client = SimpleNamespace(cluster=SimpleNamespace())  # what the Batcher reads

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


async def _settled(connection: Connection) -> None:
    if connection._replacing is not None:
        await asyncio.gather(connection._replacing, return_exceptions=True)


async def test_a_replacement_that_cannot_be_made_leaves_the_next_failure_to_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: `_new_producer` ran before `_swap`'s try, so a credential file that could not be read at that
    moment (empty mid-rotation) killed the task with `_replacing` still set: no later failure replaced the broken
    producer until a restart, and every publish to its broken partitions was 503."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    broken: Any = FakeProducer()
    connection._producer = broken
    made: list[FakeProducer] = []

    def new_producer() -> FakeProducer:
        if not made:
            made.append(FakeProducer())
            raise ConfigError("RELAY_KAFKA_SASL_PASSWORD_FILE: the file is empty")
        made.append(FakeProducer())
        return made[-1]

    monkeypatch.setattr(connection, "_new_producer", new_producer)
    monkeypatch.setattr(connection_module, "UNMADE_PAUSE", 0.0)
    connection._replace(broken, KafkaError("out of order sequence number"))
    await _settled(connection)
    assert connection._replacing is None and connection.replacements == 0
    assert any("could not be made" in r.getMessage() for r in caplog.records)
    connection._replace(broken, KafkaError("out of order sequence number"))  # the next failure
    await _settled(connection)
    assert connection.replacements == 1 and connection._producer is made[-1] and broken.stopped


async def test_a_background_start_goes_on_past_a_credential_file_it_cannot_use_yet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: `_start_later` (a relay with a spool, started without Kafka) suppressed only StartupError,
    so a ConfigError from a credential file mid-rotation ended it: the relay ran on its spool alone for good."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    attempts: list[int] = []
    started: Any = FakeProducer()

    async def start_once(timeout: float) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConfigError("RELAY_KAFKA_SSL_KEY_FILE: does not match the certificate")
        connection._producer = started

    real_sleep = asyncio.sleep
    monkeypatch.setattr(connection, "_start_once", start_once)
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))
    await asyncio.wait_for(connection._start_later(1.0), 5)
    assert connection._producer is started and len(attempts) == 3
    said = [r for r in caplog.records if "not started" in r.getMessage()]
    assert len(said) == 1  # once per reason, not every 2 s


async def test_a_background_start_says_why_kafka_refuses_the_relay_once_per_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: once Kafka was back, a refusal (a rotated SASL password, an expired certificate, a revoked
    IdempotentWrite) failed every start in the background, and `_start_later` said nothing: the relay spooled
    every delivery until the spool was full, with no line saying why."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    refusals = ["authentication failed (SCRAM-SHA-512)"] * 3 + ["TLS: certificate expired"] * 2
    started: Any = FakeProducer()

    async def start_once(timeout: float) -> None:
        if refusals:
            raise StartupError(f"Kafka at 127.0.0.1:9: {refusals.pop(0)}")
        connection._producer = started

    real_sleep = asyncio.sleep
    monkeypatch.setattr(connection, "_start_once", start_once)
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))
    await asyncio.wait_for(connection._start_later(1.0), 5)
    said = [r.getMessage() for r in caplog.records if "not started" in r.getMessage()]
    assert said == [
        "kafka producer not started (Kafka at 127.0.0.1:9: authentication failed (SCRAM-SHA-512)); retrying",
        "kafka producer not started (Kafka at 127.0.0.1:9: TLS: certificate expired); retrying",
    ]


class SlowToStart(FakeProducer):
    async def start(self) -> None:
        await asyncio.sleep(0.3)  # a TLS and SASL handshake, metadata and a producer id, just after an outage
        self.started = True


async def test_a_replacement_has_the_startup_bound_to_start_not_the_publish_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: a replacement producer had the publish bound to start in (RELAY_SPOOL_AFTER_SECONDS, 2 s, with
    a spool), where the first start has RELAY_STARTUP_TIMEOUT_SECONDS: a start that takes longer failed every time,
    and the broken producer stayed, its partitions failing, until the spool was full."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=0.05)
    broken: Any = FakeProducer()

    async def start_once(timeout: float) -> None:
        connection._producer = broken

    monkeypatch.setattr(connection, "_start_once", start_once)
    await connection.start(timeout=5.0)
    fresh = SlowToStart()
    monkeypatch.setattr(connection, "_new_producer", lambda: fresh)
    connection._replace(broken, KafkaError("out of order sequence number"))
    await _settled(connection)
    assert connection.replacements == 1 and connection._producer is fresh and broken.stopped


async def test_a_replacement_that_cannot_be_made_is_tried_once_per_pause_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review of the above: every batch failing on the broken producer started a new attempt, each rereading the
    files and logging two lines: a flood while a password file stayed empty under load."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    broken: Any = FakeProducer()
    connection._producer = broken
    attempts: list[int] = []

    def new_producer() -> FakeProducer:
        attempts.append(1)
        raise ConfigError("RELAY_KAFKA_SASL_PASSWORD_FILE: the file is empty")

    monkeypatch.setattr(connection, "_new_producer", new_producer)
    monkeypatch.setattr(connection_module, "UNMADE_PAUSE", 1.0)  # far longer than the 50 calls below take
    for _ in range(50):  # 50 failed batches at once: one attempt, paused
        connection._replace(broken, KafkaError("out of order sequence number"))
        await asyncio.sleep(0)
    await _settled(connection)
    connection._replace(broken, KafkaError("out of order sequence number"))  # after the pause: tried again
    await _settled(connection)
    assert len(attempts) == 2
    assert sum("could not be made" in r.getMessage() for r in caplog.records) == 1


def test_a_record_whose_producer_was_replaced_is_a_kafka_error_not_a_shutdown() -> None:
    """Review finding: a request on a producer replaced as broken (an append to its retired batcher, or a send on it
    while it closes, fails with ProducerClosed) was answered `shutting_down`, and counted so, while the relay was
    not stopping: the operator's label pointed at a rollout. Only a producer the relay itself stopped says that."""
    publisher = KafkaPublisher(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    old: Any = FakeProducer()
    publisher._producer = FakeProducer()  # the replacement, installed
    assert publisher._why(old, ProducerClosed()).cause == "kafka_error"
    assert publisher._closed(old, "before it was sent").cause == "kafka_error"  # the append's path
    publisher._producer = None  # stop() clears it before it stops the producer
    assert publisher._why(old, ProducerClosed()).cause == "shutting_down"
    assert publisher._closed(old, "before it was sent").cause == "shutting_down"


async def test_a_batch_failing_while_stop_settles_a_replacement_starts_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: stop() cancelled a replacement and awaited it while the broken producer was still current,
    so a batch failing on it in that gap started a second replacement, which installed a producer after stop():
    never stopped, taking records, its closes labelled `kafka_error` instead of `shutting_down`."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=5.0)
    broken: Any = FakeProducer()
    connection._producer = broken
    made: list[FakeProducer] = []

    class Stalled(FakeProducer):
        async def start(self) -> None:  # the first replacement's start hangs until stop() cancels it
            await asyncio.Event().wait()

    def new_producer() -> FakeProducer:
        made.append(Stalled() if not made else FakeProducer())
        return made[-1]

    monkeypatch.setattr(connection, "_new_producer", new_producer)
    failure = KafkaError("out of order sequence number")
    connection._replace(broken, failure)
    first = connection._replacing
    assert first is not None
    # Run when the cancelled replacement has ended, before stop() resumes: a batch failing on the broken producer.
    first.add_done_callback(lambda _: connection._replace(broken, failure))
    await asyncio.sleep(0)  # the replacement waits on its producer's start
    await connection.stop()
    await _settled(connection)
    assert connection._producer is None, "a producer was installed after stop()"
    assert len(made) == 1 and made[0].stopped


class SlowToStop(FakeProducer):
    """A broken producer whose stop waits (its batches held by a Kafka that does not answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def stop(self) -> None:
        await self.release.wait()
        self.stopped = True


async def test_a_replacement_that_breaks_while_the_broken_one_stops_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: `_swap` stopped the broken producer while `_replacing` was still set, which takes up to
    QUIET_STOP_SECONDS per step of `_quiet_stop` with a Kafka that does not answer: a fresh producer that broke
    meanwhile was refused its replacement (`_replace` returns while one runs), every publish a 503 until then."""
    connection = Connection(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)
    broken = SlowToStop()
    connection._producer = cast(Any, broken)
    made: list[FakeProducer] = []

    def new_producer() -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    monkeypatch.setattr(connection, "_new_producer", new_producer)
    connection._replace(cast(Any, broken), KafkaError("out of order sequence number"))
    first = connection._replacing
    for _ in range(100):  # bounded: until the fresh producer is installed
        if connection.replacements == 1:
            break
        await asyncio.sleep(0)
    assert connection._producer is made[0] and not broken.stopped  # installed; the broken one still stopping
    connection._replace(cast(Any, made[0]), KafkaError("out of order sequence number"))  # the fresh one breaks
    await _settled(connection)
    assert connection.replacements == 2 and connection._producer is made[1]
    broken.release.set()
    assert first is not None
    await asyncio.wait_for(first, 5)
    assert broken.stopped


@pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])
async def test_without_a_spool_a_stalled_partition_may_hold_an_eighth_of_max_in_flight(
    spool: bool, tmp_path: Any
) -> None:
    """The cap a partition Kafka does not settle is held to (relay.kafka.batching.Batcher.append): an eighth of
    RELAY_MAX_IN_FLIGHT without a spool, so that seven such partitions still leave the others admitted; none with
    one, whose held rows and drain caps bound it."""
    settings = make_settings(max_in_flight=80, **({"spool_dir": tmp_path} if spool else {}))
    connection = Connection.from_settings(settings)
    batcher = connection._batching(cast("Any", FakeProducer()))
    assert batcher._lane_records == (None if spool else 10)


async def test_a_record_refused_by_a_stalled_partition_has_a_cause_of_its_own() -> None:
    """Review finding: a record a stalled partition refused was answered, logged and counted `kafka_timeout`, the
    cause of a record kept in the producer, so the operator could not tell kept from lost (without the spool, a
    refused delivery is lost if the stall outlasts MyTPE's retries). It is `partition_stalled`, nothing pending."""
    publisher = KafkaPublisher(bootstrap_servers=["127.0.0.1:9"], publish_timeout=1.0)

    class Refusing:
        def partition(self, topic: str, key: bytes) -> int:
            return 0

        def append(self, *args: Any, **kwargs: Any) -> None:
            raise Stalled("partition 0 of t: 64 records unacknowledged past the bound")

    publisher._producer, publisher._batcher = cast("Any", FakeProducer()), cast("Any", Refusing())
    with pytest.raises(Unavailable) as refused:
        await publisher.publish("t", b"k", b"v", [])
    assert refused.value.cause == "partition_stalled" and "64 records" in refused.value.detail
