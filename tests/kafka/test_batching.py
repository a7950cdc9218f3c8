"""The batcher's lanes, against a producer whose deliveries the test settles (aiokafka's real BatchBuilder).

The real broker's side (offsets, order, the idempotent producer) is in tests/integration/test_batching_kafka.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, ProducerClosed, TopicAuthorizationFailedError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from relay.kafka.batching import Batch, Batcher, Stalled
from relay.kafka.partitioning import partition_for

HEADERS = [("content-type", b"application/json")]


@dataclass
class Submitted:
    topic: str
    partition: int
    records: int
    delivery: asyncio.Future[Any]


@dataclass
class FakeProducer:
    """create_batch/send_batch as aiokafka has them; each submitted batch waits for the test to settle it."""

    partitions: dict[str, int] = field(default_factory=lambda: {"t": 3})
    batch_size: int = 16384
    submitted: list[Submitted] = field(default_factory=list)

    def __post_init__(self) -> None:
        cluster = SimpleNamespace(partitions_for_topic=lambda topic: set(range(self.partitions[topic])))
        self.client = SimpleNamespace(cluster=cluster)

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.closed(), "a batch is closed before it is submitted, so aiokafka does not linger on it"
        delivery = asyncio.get_running_loop().create_future()
        self.submitted.append(Submitted(topic, partition, batch.record_count(), delivery))
        return delivery

    def ack(self, index: int, base_offset: int) -> None:
        self.submitted[index].delivery.set_result(SimpleNamespace(offset=base_offset))


def lanes(bound: float = 5.0, lane_records: int | None = None, **producer: Any) -> tuple[FakeProducer, Batcher]:
    fake = FakeProducer(**producer)
    return fake, Batcher(fake, bound=bound, lane_records=lane_records)


def append(batcher: Batcher, key: bytes, partition: int = 0, topic: str = "t") -> tuple[Any, int]:
    return batcher.append(topic, partition, key, b"v-" + key, HEADERS)


def without_metadata() -> tuple[FakeProducer, Batcher]:
    """Lanes where topic "gone" has no metadata (deleted while its batch waited, or being made again)."""
    producer, batcher = lanes(partitions={"t": 3, "gone": 1})
    producer.client.cluster.partitions_for_topic = lambda topic: None if topic == "gone" else {0, 1, 2}
    return producer, batcher


async def test_records_of_one_tick_leave_in_one_batch_and_get_their_own_offsets() -> None:
    producer, batcher = lanes()
    appended = [append(batcher, f"k{i}".encode()) for i in range(5)]
    await asyncio.sleep(0)
    assert [(s.partition, s.records) for s in producer.submitted] == [(0, 5)]
    producer.ack(0, base_offset=40)
    for batch, index in appended:
        await batch.waiter(index)
    assert [batch.future.result() + index for batch, index in appended] == [40, 41, 42, 43, 44]


async def test_a_partition_has_one_batch_in_flight_and_the_next_one_fills_meanwhile() -> None:
    producer, batcher = lanes()
    append(batcher, b"first")
    await asyncio.sleep(0)
    later = [append(batcher, f"k{i}".encode()) for i in range(3)]
    await asyncio.sleep(0.01)
    assert len(producer.submitted) == 1, "nothing more is submitted while the partition's batch is in flight"
    producer.ack(0, base_offset=0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [s.records for s in producer.submitted] == [1, 3]
    producer.ack(1, base_offset=1)
    await later[-1][0].waiter(later[-1][1])
    assert [batch.future.result() + index for batch, index in later] == [1, 2, 3]


async def test_partitions_ready_together_are_submitted_in_one_pass() -> None:
    producer, batcher = lanes(partitions={"t": 3, "u": 2})
    for topic, partition in [("t", 0), ("t", 1), ("t", 2), ("u", 1)]:
        append(batcher, b"k", partition, topic)
    await asyncio.sleep(0)  # one pass of the loop: every lane is handed over before anything else runs
    assert sorted((s.topic, s.partition) for s in producer.submitted) == [("t", 0), ("t", 1), ("t", 2), ("u", 1)]


async def test_a_full_batch_is_followed_by_a_new_one_in_order() -> None:
    producer, batcher = lanes(batch_size=300)
    appended = [batcher.append("t", 0, f"k{i}".encode(), b"x" * 120, HEADERS) for i in range(5)]
    batches = list(dict.fromkeys(batch for batch, _ in appended))
    assert len(batches) > 1, "a record that does not fit starts the next batch"
    offset = 10
    for index in range(len(batches)):  # one batch of the partition in flight at a time, in append order
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(producer.submitted) == index + 1
        producer.ack(index, base_offset=offset)
        offset += producer.submitted[index].records
    await appended[-1][0].waiter(appended[-1][1])
    assert [batch.future.result() + index for batch, index in appended] == [10, 11, 12, 13, 14]


async def test_a_waiter_wakes_at_the_bound_while_the_batch_stays_pending() -> None:
    producer, batcher = lanes(0.05)
    batch, _ = append(batcher, b"k")
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(batch.waiter(0), 5)
    assert asyncio.get_running_loop().time() - started >= 0.04
    assert not batch.future.done(), "the record is still with the producer: its outcome is still to come"
    producer.ack(0, base_offset=7)
    assert await asyncio.shield(batch.future) == 7


async def test_a_record_joining_the_waiting_batch_past_a_tenth_of_the_bound_has_a_bound_of_its_own() -> None:
    producer, batcher = lanes(0.2)
    append(batcher, b"in-flight")
    await asyncio.sleep(0)
    first, a = append(batcher, b"a")
    joined, b = append(batcher, b"a2")
    await asyncio.sleep(0.05)  # past a tenth of the bound: b opens a cohort of its own in the same batch
    second, c = append(batcher, b"b")
    assert first is joined is second and (a, b, c) == (0, 1, 2)
    assert first.opened_at(a) == first.opened_at(b) == first.opened
    assert first.opened_at(c) - first.opened >= 0.05
    assert first.overdue(first.opened) == 0 and first.overdue(first.opened_at(c)) == 2 and first.overdue(1e9) == 3
    await asyncio.wait_for(first.waiter(a), 5)  # a's bound: c's is still to come, though its batch is the same
    assert not first.future.done()
    await asyncio.wait_for(first.waiter(c), 5)
    assert asyncio.get_running_loop().time() - first.opened_at(c) >= 0.19
    producer.ack(0, base_offset=0)


async def test_a_cancelled_waiter_leaves_the_batch_and_the_other_records_alone() -> None:
    producer, batcher = lanes()
    batch, _ = append(batcher, b"a")
    append(batcher, b"b")
    gone = asyncio.ensure_future(batch.waiter(0))
    staying = batch.waiter(1)
    await asyncio.sleep(0)
    gone.cancel()
    producer.ack(0, base_offset=3)
    await staying
    assert batch.future.result() == 3


async def test_a_failed_delivery_fails_its_batch_and_frees_the_partition() -> None:
    producer, batcher = lanes()
    batch, _ = append(batcher, b"a")
    await asyncio.sleep(0)
    append(batcher, b"b")
    producer.submitted[0].delivery.set_exception(KafkaConnectionError())
    await batch.waiter(0)
    with pytest.raises(KafkaConnectionError):
        batch.future.result()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [s.records for s in producer.submitted] == [1, 1], "the next batch goes once the failed one is settled"


async def test_close_fails_what_was_never_submitted_and_refuses_new_records() -> None:
    producer, batcher = lanes()
    sent, _ = append(batcher, b"a")
    await asyncio.sleep(0)
    unsent, _ = append(batcher, b"b")
    batcher.close(KafkaConnectionError("replaced"))
    with pytest.raises(KafkaConnectionError):
        unsent.future.result()
    assert not sent.future.done(), "a submitted batch settles with the producer's own outcome"
    with pytest.raises(ProducerClosed):
        append(batcher, b"c")
    producer.ack(0, base_offset=0)
    await asyncio.wait_for(batcher.flush(), 5)
    assert sent.future.result() == 0


async def test_flush_waits_for_every_batch_submitted_or_not() -> None:
    producer, batcher = lanes()
    append(batcher, b"a")
    await asyncio.sleep(0)
    append(batcher, b"b")
    flushing = asyncio.ensure_future(batcher.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done()
    producer.ack(0, base_offset=0)
    await asyncio.sleep(0.01)
    assert not flushing.done(), "the second batch is submitted once the first settled, and still pending"
    producer.ack(1, base_offset=1)
    await asyncio.wait_for(flushing, 5)
    assert batcher.unsettled() == []


async def test_partition_of_a_key_follows_the_topics_partition_count() -> None:
    _, batcher = lanes(partitions={"t": 3, "many": 12})
    assert batcher.partition("t", b"entity-1") == partition_for(b"entity-1", 3)
    assert batcher.partition("many", b"entity-1") == partition_for(b"entity-1", 12)


async def test_an_unexpected_error_from_send_batch_fails_the_batch_and_frees_the_partition() -> None:
    producer, batcher = lanes()
    real_send_batch = producer.send_batch
    failures = [TypeError("metadata changed under the producer")]

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if failures:
            raise failures.pop()
        return await real_send_batch(batch, topic, partition=partition)

    producer.send_batch = send_batch  # type: ignore[method-assign]
    failed, _ = append(batcher, b"a")
    await failed.waiter(0)
    with pytest.raises(TypeError):
        failed.future.result()
    later, _ = append(batcher, b"b")
    await asyncio.sleep(0)
    producer.ack(0, base_offset=5)
    await later.waiter(0)
    assert later.future.result() == 5


class Sequences:
    """aiokafka's transaction manager, as `_unsequence` calls it."""

    def __init__(self) -> None:
        self.given_back: list[tuple[TopicPartition, int]] = []

    def increment_sequence_number(self, partition: TopicPartition, count: int) -> None:
        self.given_back.append((partition, count))


@pytest.mark.parametrize(("sends", "given_back"), [(1, [(TopicPartition("t", 0), -1)]), (2, [])])
async def test_sequence_numbers_are_given_back_only_for_a_batch_sent_once(
    sends: int, given_back: list[tuple[TopicPartition, int]]
) -> None:
    """Review finding: they were given back for a refusal (a topic ACL, 29) of a batch aiokafka had sent before,
    whose first send may have been written with its answer lost: the partition's next batch of as many records
    would then be a duplicate the broker acknowledges without writing it, a payment answered 200 and lost."""
    producer, batcher = lanes()
    producer._txn_manager = Sequences()  # type: ignore[attr-defined]
    queued: dict[TopicPartition, list[Any]] = {}
    producer._message_accumulator = SimpleNamespace(_batches=queued)  # type: ignore[attr-defined]
    real_send = producer.send_batch

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        queued.setdefault(TopicPartition(topic, partition), []).append(SimpleNamespace(_builder=batch, retry_count=0))
        return await real_send(batch, topic, partition=partition)

    producer.send_batch = send_batch  # type: ignore[method-assign]
    batch, _ = append(batcher, b"a")
    await asyncio.sleep(0)
    queued[TopicPartition("t", 0)][0].retry_count = sends  # what aiokafka's drains counted
    producer.submitted[0].delivery.set_exception(TopicAuthorizationFailedError())
    await batch.waiter(0)
    assert producer._txn_manager.given_back == given_back  # type: ignore[attr-defined]


async def test_a_partition_whose_batch_never_settles_holds_lane_records_at_most_and_the_others_go_on() -> None:
    """Review finding: the idempotent producer retries a batch whose partition has a leader for as long as it runs
    (a partition short of in-sync replicas: NOT_ENOUGH_REPLICAS). Every later record of that partition joined the
    queue behind it and became a pending delivery counted against RELAY_MAX_IN_FLIGHT, until no delivery of any
    partition was admitted. A partition holding `lane_records` records whose bound passed (each answered pending)
    takes no more (Stalled: not taken, so not pending); within their bound, it takes them all."""
    producer, batcher = lanes(bound=0.1, lane_records=3)
    append(batcher, b"stuck")
    await asyncio.sleep(0)
    for n in range(4):  # within the bound: queued behind it, however many
        append(batcher, b"within %d" % n)
    await asyncio.sleep(0.15)
    with pytest.raises(Stalled, match="partition 0 of t: 5 records unacknowledged past the bound"):
        append(batcher, b"past the bound")
    append(batcher, b"elsewhere", partition=1)
    await asyncio.sleep(0)
    assert [(s.partition, s.records) for s in producer.submitted] == [(0, 1), (1, 1)]
    producer.ack(0, base_offset=7)  # the partition is back: the batch queued behind goes; 4 records past their
    await asyncio.sleep(0.01)  # bound remain, still over the cap, until it settles
    with pytest.raises(Stalled, match="4 records"):
        append(batcher, b"while those wait")
    producer.ack(2, base_offset=8)
    await asyncio.sleep(0.01)
    append(batcher, b"after they settled")
    await asyncio.sleep(0.01)
    assert [(s.partition, s.records) for s in producer.submitted] == [(0, 1), (1, 1), (0, 4), (0, 1)]


async def test_a_partition_acknowledging_slowly_that_keeps_up_is_never_refused() -> None:
    """Review of the cap's first forms: measured from a batch's hand-over (a tenth of the bound, then the whole
    bound), it refused records of a partition whose acks=all took a while (a lagging follower) though each would
    have been acknowledged in time: here each second record of a pair, sent while the first's batch has been in
    flight longer than a tenth of the bound. A partition that keeps up is never refused, over three bounds."""
    producer, batcher = lanes(bound=1.0, lane_records=1)
    loop, real = asyncio.get_running_loop(), producer.send_batch

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        delivery = await real(batch, topic, partition=partition)
        index = len(producer.submitted) - 1
        loop.call_later(0.15, producer.ack, index, index)  # each batch acknowledged 0.15 s after it was sent
        return delivery

    producer.send_batch = send_batch  # type: ignore[method-assign]
    refused = 0
    for n in range(8):  # a pair every 0.4 s for 3.2 s: the second of each 0.12 s after the first
        for key in (b"a%d" % n, b"b%d" % n):
            try:
                append(batcher, key)
            except Stalled:
                refused += 1
            await asyncio.sleep(0.12 if key.startswith(b"a") else 0.28)
    assert refused == 0 and len(producer.submitted) == 16


async def test_a_lane_whose_batches_are_acknowledged_but_fall_behind_is_capped() -> None:
    """Review of the cap's first forms: with every batch acknowledged quickly but records arriving faster than the
    lane sends them (small batches), the batch in flight was always fresh and the backlog grew without a cap, each
    record past its bound a pending delivery. What counts is the records past their bound, wherever they wait."""
    producer, batcher = lanes(bound=0.2, lane_records=3, batch_size=120)  # one record per batch
    refused = 0
    for n in range(60):  # two records every 10 ms, one batch acknowledged: the lane falls behind by one
        for key in (b"a%d" % n, b"b%d" % n):
            try:
                append(batcher, key)
            except Stalled:
                refused += 1
        await asyncio.sleep(0.01)
        producer.ack(next(i for i, s in enumerate(producer.submitted) if not s.delivery.done()), base_offset=n)
    held = sum(1 for future in batcher.unsettled() if not future.done())
    assert refused > 0 and held < 50, (refused, held)  # uncapped, about 60 are held; capped, 3 plus a bound's ~40


async def test_close_fails_a_batch_whose_task_was_cancelled_before_it_started() -> None:
    """Review of close(): a task cancelled by someone else before its first step (asyncio.run's end cancels every
    task) never ran its handler, and close() skipped it as done: its batch never settled."""
    _, batcher = without_metadata()
    batch, _ = append(batcher, b"g", topic="gone")
    await asyncio.sleep(0)  # the pass runs: the batch's task is made, not started
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    await asyncio.sleep(0)
    batcher.close(ProducerClosed())
    assert batch.future.done() and isinstance(batch.future.exception(), ProducerClosed)


async def test_close_does_not_fail_a_batch_its_task_already_handed_to_aiokafka() -> None:
    """Review of close(): a task done (its batch queued in aiokafka) whose done callback had not run yet was taken
    for one still waiting, and its batch failed: the requester told 'not written' while aiokafka wrote it."""
    producer, batcher = without_metadata()
    real = producer.send_batch

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        asyncio.get_running_loop().call_soon(batcher.close)  # runs before the task's done callback
        return await real(batch, topic, partition=partition)

    producer.send_batch = send_batch  # type: ignore[method-assign]
    batch, _ = append(batcher, b"g", topic="gone")
    await asyncio.sleep(0.01)
    assert [s.topic for s in producer.submitted] == ["gone"] and not batch.future.done()
    producer.ack(0, base_offset=3)
    await asyncio.sleep(0.01)
    assert batch.future.result() == 3


async def test_a_batch_waiting_for_metadata_in_a_task_not_yet_started_is_failed_by_close() -> None:
    """Review of the metadata fix: close() cancelled the task that hands such a batch over, but a task cancelled
    before it started never runs its own handler: the batch never settled, each record a pending delivery for good."""
    _, batcher = without_metadata()
    batch, _ = append(batcher, b"g", topic="gone")
    await asyncio.sleep(0)  # the pass runs: the batch's task is made, not started
    batcher.close(ProducerClosed())
    await asyncio.sleep(0)
    assert batch.future.done() and isinstance(batch.future.exception(), ProducerClosed)


async def test_without_lane_records_a_partition_that_never_settles_takes_every_record() -> None:
    """With a spool the relay sets no `lane_records`: a record not acknowledged in time is spooled and held, and
    the drain's own caps bound its publishes (relay/spool/drainer.py)."""
    producer, batcher = lanes(bound=0.01)
    append(batcher, b"stuck")
    await asyncio.sleep(0.05)
    for n in range(50):
        append(batcher, b"k%d" % n)
    assert [(s.partition, s.records) for s in producer.submitted] == [(0, 1)]


async def test_a_lane_waiting_for_its_topics_metadata_does_not_hold_the_other_lanes() -> None:
    """Review finding: aiokafka's send_batch waits for a topic's metadata (up to the delivery timeout, 120 s by
    default) when it has none (a topic deleted while its batch waited, or made again), and the pass awaited each
    lane in turn: every other partition's records waited with it, answered 503."""
    producer, batcher = without_metadata()
    gone = asyncio.Event()
    real = producer.send_batch

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if topic == "gone":
            await gone.wait()  # never set: aiokafka still waiting for the metadata
        return await real(batch, topic, partition=partition)

    producer.send_batch = send_batch  # type: ignore[method-assign]
    gone_batch, _ = append(batcher, b"g", topic="gone")
    append(batcher, b"elsewhere")
    await asyncio.sleep(0.01)
    assert [(s.topic, s.records) for s in producer.submitted] == [("t", 1)]
    append(batcher, b"and after")  # the partition of t is free again once acked; the pass is not stuck
    producer.ack(0, base_offset=1)
    await asyncio.sleep(0.01)
    assert [(s.topic, s.records) for s in producer.submitted] == [("t", 1), ("t", 1)]
    batcher.close(ProducerClosed())  # a replacement retires the producer: the metadata wait never ends
    await asyncio.sleep(0.01)
    stuck = gone_batch.future
    assert stuck.done() and isinstance(stuck.exception(), ProducerClosed), "close left a batch unsettled for good"


async def test_a_lane_whose_acknowledgements_take_longer_than_a_tenth_of_the_bound_keeps_up() -> None:
    """Each batch acknowledged 0.15 s after it was sent, a record every 20 ms, a bound of 1 s. A batch that took
    records for a tenth of the bound only (0.1 s) made one batch per 0.1 s, sent one per 0.15 s: the lane fell
    behind without end, and from about 1.7 s on every record outlived its bound (answered pending) though the
    partition answered each batch in 0.15 s. The batch waiting for the lane takes every record until it is sent."""
    producer, batcher = lanes(bound=1.0)
    loop, real = asyncio.get_running_loop(), producer.send_batch

    async def send_batch(batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        delivery = await real(batch, topic, partition=partition)
        index = len(producer.submitted) - 1
        loop.call_later(0.15, producer.ack, index, index)
        return delivery

    producer.send_batch = send_batch  # type: ignore[method-assign]

    async def sender(batch: Batch, index: int) -> bool:  # as the publisher waits: True when it outlived its bound
        await batch.waiter(index)
        return not batch.future.done()

    senders = []
    for n in range(125):  # 2.5 s
        senders.append(asyncio.create_task(sender(*append(batcher, b"k%d" % n))))
        await asyncio.sleep(0.02)
    late = [n for n, pending in enumerate(await asyncio.gather(*senders)) if pending]
    assert not late, f"{len(late)} of 125 records outlived their bound, the first #{late[0]}"
