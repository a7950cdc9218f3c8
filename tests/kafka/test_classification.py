"""How a failed produce is answered (relay.kafka.publisher), against a producer whose batches the test
settles: aiokafka 0.14 reads INVALID_RECORD (87) as UnknownError (errno -1), and CORRUPT_MESSAGE (2) is
retriable (as in Java)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import CorruptRecordException, UnknownError

from relay.errors import KafkaRefused, PublishPending, Unavailable
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


async def test_a_record_resent_alone_waits_within_its_first_bound_not_a_fresh_one() -> None:
    """Review finding: a record whose batch of several was refused was sent again alone with a bound of its own, so
    a request could wait on Kafka for twice RELAY_PUBLISH_TIMEOUT_SECONDS while its dedupe claim's lease (checked
    only against one) ran out, and a retry on another replica published it a second time. The resend now waits
    within what is left of the first bound, then is pending (the late ack holds and renews the claim)."""
    producer = FakeProducer(partitions={"t": 1})
    publisher = KafkaPublisher(bootstrap_servers=["127.0.0.1:9"], publish_timeout=2.0)
    publisher._producer = producer
    publisher._batcher = Batcher(producer, bound=2.0)
    loop = asyncio.get_running_loop()
    ended: list[float] = []
    sends = [asyncio.create_task(publisher.publish("t", key, b"v", [])) for key in (b"a", b"b")]
    for send in sends:
        send.add_done_callback(lambda _: ended.append(loop.time()))
    await submitted(producer, 1)
    first = producer.submitted[0]
    await asyncio.sleep(1.6)  # most of the first bound spent waiting on Kafka
    first.delivery.set_exception(UnknownError())  # the batch of two refused: each is sent again alone
    await submitted(producer, 2)  # the first resend (the second waits for it: one batch in flight per partition)
    resent_at = loop.time()
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, PublishPending), outcome
        outcome.outcome.close()  # nobody waits for the late outcome here
    # Each ended at the first bound (about 0.4 s after the resend), not at the resend's own (2 s after it).
    assert max(ended) < resent_at + 1.8, (max(ended) - resent_at, "a fresh bound was given to the resend")


async def test_a_record_resent_alone_after_its_answer_gets_a_bound_of_its_own() -> None:
    """Review of the above: a batch refused after its records were answered pending resent them with the first
    bound, already past, so one whose topic's partitions had to be fetched again was `kafka_timeout` at once,
    never sent. Nobody waits on that bound any more: the late resend gets one of its own."""

    class Refreshing(FakeProducer):
        async def partitions_for(self, topic: str) -> set[int]:
            await asyncio.sleep(0.01)  # a request to the broker
            self.partitions[topic] = 1  # the metadata, fetched again
            return {0}

    producer = Refreshing(partitions={"t": 1})
    publisher = KafkaPublisher(bootstrap_servers=["127.0.0.1:9"], publish_timeout=0.2)
    publisher._producer = producer
    publisher._batcher = Batcher(producer, bound=0.2)
    publishes = (publisher.publish("t", key, b"v", []) for key in (b"a", b"b"))
    sends = await asyncio.gather(*publishes, return_exceptions=True)
    assert all(isinstance(send, PublishPending) for send in sends), sends  # answered: nobody waits on the bound
    late = [asyncio.create_task(send.outcome) for send in sends if isinstance(send, PublishPending)]
    producer.partitions["t"] = 0  # the topic's partitions unknown until fetched again
    producer.submitted[0].delivery.set_exception(UnknownError())  # the batch of two refused: each resent alone
    for count, offset in ((2, 7), (3, 8)):
        for _ in range(500):  # bounded: 5 s for the metadata's 0.01 s
            if len(producer.submitted) >= count:
                break
            await asyncio.sleep(0.01)
        producer.ack(count - 1, base_offset=offset)
    assert await asyncio.gather(*late) == [Ack("t", 0, 7), Ack("t", 0, 8)]


async def test_a_partition_the_topic_lost_is_a_503_not_a_500() -> None:
    """Review finding: a topic deleted and made again with fewer partitions (auto-created with one, say) made
    aiokafka's send_batch raise AssertionError("Unrecognized partition") for a lane of a partition gone; the
    publisher let it through as it is, and the request got the 500 of last resort, which MyTPE is not known to
    retry. Nothing was sent: it is Unavailable (`kafka_error`), the claim released, MyTPE's retry publishes."""
    producer = FakeProducer(partitions={"t": 1})

    async def send_batch(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        raise AssertionError("Unrecognized partition")

    producer.send_batch = send_batch  # type: ignore[method-assign]
    publisher = publisher_on(producer)
    try:
        await publisher.publish("t", b"k", b"v", [])
    except Unavailable as refused:
        assert refused.cause == "kafka_error" and "Unrecognized partition" in refused.detail
    else:
        raise AssertionError("published")
