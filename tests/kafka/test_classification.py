"""How a failed produce is answered (relay.kafka.publisher), against a producer whose batches the test
settles: aiokafka 0.14 reads INVALID_RECORD (87) as UnknownError (errno -1), and CORRUPT_MESSAGE (2) is
retriable (as in Java)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import CorruptRecordException, UnknownError

from relay.errors import KafkaRefused, Unavailable
from relay.kafka.batching import Batcher
from relay.kafka.publisher import KafkaPublisher
from relay.types import Ack
from tests.kafka.test_batching import FakeProducer


def publisher_on(producer: FakeProducer) -> KafkaPublisher:
    publisher = KafkaPublisher(bootstrap_servers=["127.0.0.1:9"], publish_timeout=5.0)
    publisher._producer = producer
    publisher._batcher = Batcher(producer, bound=5.0)
    return publisher


async def submitted(producer: FakeProducer, count: int) -> None:
    for _ in range(1000):  # bounded
        if len(producer.submitted) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} batch(es) never submitted: {producer.submitted}")


async def test_an_unknown_error_resends_each_record_alone_and_refuses_only_the_one_refused_alone() -> None:
    """Policy: UnknownError (which may be INVALID_RECORD) is about the record only when it is alone in its
    batch; alone, it is refused for good (to the DLQ, as Java fails UnknownServerException to the caller)."""
    producer = FakeProducer(partitions={"t": 1})
    publisher = publisher_on(producer)
    sends: list[asyncio.Task[Ack]] = [
        asyncio.create_task(publisher.publish("t", key, b"v", [])) for key in (b"bad", b"good")
    ]
    await submitted(producer, 1)
    assert producer.submitted[0].records == 2
    producer.submitted[0].delivery.set_exception(UnknownError())
    await submitted(producer, 2)
    producer.submitted[1].delivery.set_exception(UnknownError())  # "bad", alone
    await submitted(producer, 3)
    producer.ack(2, base_offset=11)  # "good", alone
    bad, good = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(bad, KafkaRefused) and bad.detail == "UnknownError", bad
    assert good == Ack("t", 0, 11)
    assert [s.records for s in producer.submitted] == [2, 1, 1]


async def test_a_corrupt_message_is_worth_a_retry_not_the_dlq() -> None:
    producer = FakeProducer(partitions={"t": 1})
    publisher = publisher_on(producer)
    send = asyncio.create_task(publisher.publish("t", b"k", b"v", []))
    await submitted(producer, 1)
    producer.submitted[0].delivery.set_exception(CorruptRecordException())
    outcome: Any = (await asyncio.gather(send, return_exceptions=True))[0]
    assert isinstance(outcome, Unavailable) and not isinstance(outcome, KafkaRefused), outcome
    assert outcome.cause == "kafka_error"
