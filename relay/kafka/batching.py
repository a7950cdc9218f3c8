"""Records batched per partition onto one aiokafka producer, through its public batch API.

aiokafka's `send()` costs tens of CPU microseconds per record: a coroutine, a future and a metadata
object per record, and an `asyncio.wait` per waiting send once a partition's batch is full. Here a
record is one append to its partition's open batch (aiokafka's C builder), and its sender awaits the
batch's one future.

Each partition (a *lane*) has at most one batch submitted to aiokafka at a time. While it is in
flight, records fill the next batch (until it is full: BATCH_BYTES), which is submitted as soon as the
first settles: batches grow with the load and with the acknowledgements' time, and at low load a record
leaves at once (no linger). Lanes ready at the same moment are
submitted in one pass that does not yield, so aiokafka's sender drains them into one produce request.
Within a partition, records reach the idempotent producer in append order, as with `send()`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextvars
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from aiokafka.structs import TopicPartition

from relay.kafka.partitioning import partition_for

# Larger than aiokafka's 16 KiB default, so a busy partition fills fewer batches; far below the
# broker's default message.max.bytes (1 MiB), which bounds one batch.
BATCH_BYTES = 256 * 1024

# Produce errors the broker answers before it appends anything (size 10/18, invalid topic 17, topic ACL 29,
# policy 44): the batch was not written. Not UnknownError (-1): whether it was written is unknown.
REJECTED_UNWRITTEN = frozenset({10, 17, 18, 29, 44})


class Stalled(Exception):
    """A record for a partition that holds as many records as it may whose bound passed unsettled: not taken."""


class Batch:
    """Records appended together; `future` gives the base offset once Kafka acknowledged them all.

    Its records join in cohorts: a cohort takes records for a tenth of the bound from its first, and has a
    timer at its first record's bound. Each record's sender awaits a `waiter()` of its own, woken when the
    batch settles or when its cohort's bound passes, whichever comes first: one timer per cohort, none per
    record, and every record waits between 0.9 and 1.0 times the bound.
    """

    __slots__ = ("_bound", "_firsts", "_starts", "_timers", "_waiters", "builder", "future", "opened", "sent")

    def __init__(self, builder: Any, loop: asyncio.AbstractEventLoop, *, opened: float, bound: float) -> None:
        self.builder = builder
        self.sent: Any = None
        """aiokafka's MessageBatch for it once submitted: its retry count says how often it was sent."""
        self.future: asyncio.Future[int] = loop.create_future()
        self.opened = opened
        """When its first cohort opened: its oldest record's start."""
        self._bound = bound
        self._starts: list[float] = []  # each cohort's opening, its first record's index, its timer and waiters
        self._firsts: list[int] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._waiters: list[list[asyncio.Future[None]]] = []
        self.join(opened, 0)

    def join(self, now: float, index: int) -> None:
        """A cohort opened at `now` by the record at `index` (appended last)."""
        cohort = len(self._starts)
        self._starts.append(now)
        self._firsts.append(index)
        self._waiters.append([])
        self._timers.append(self.future.get_loop().call_at(now + self._bound, self._wake, cohort))

    def latest(self) -> float:
        """When its newest cohort opened."""
        return self._starts[-1]

    def opened_at(self, index: int) -> float:
        """When the cohort of the record at `index` opened: its bound is this plus the batcher's."""
        return self._starts[bisect.bisect_right(self._firsts, index) - 1]

    def overdue(self, since: float) -> int:
        """Its records whose cohort opened before `since`."""
        cohorts = bisect.bisect_left(self._starts, since)
        if cohorts == len(self._starts):
            return self.builder.record_count()  # type: ignore[no-any-return]
        return self._firsts[cohorts]

    def waiter(self, index: int) -> asyncio.Future[None]:
        """Done when the batch settles or the bound of the record at `index` passes; cancelling it affects no
        other record."""
        waiter: asyncio.Future[None] = self.future.get_loop().create_future()
        if self.future.done():
            waiter.set_result(None)
        else:
            self._waiters[bisect.bisect_right(self._firsts, index) - 1].append(waiter)
        return waiter

    def settle(self, base_offset: int | None, error: BaseException | None) -> None:
        future = self.future
        if future.done():
            return
        if error is None:
            future.set_result(base_offset if base_offset is not None else -1)
        else:
            future.set_exception(error)
            future.exception()  # marked as retrieved: its waiters read it through `future`, or timed out
        for cohort, timer in enumerate(self._timers):
            timer.cancel()
            self._wake(cohort)

    def _wake(self, cohort: int) -> None:
        waiters, self._waiters[cohort] = self._waiters[cohort], []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass(slots=True)
class _Lane:
    topic: str
    partition: int
    waiting: collections.deque[Batch] = field(default_factory=collections.deque)
    sending: Batch | None = None


class Batcher:
    """One producer's lanes. Created with the producer, closed before the producer stops.

    `bound` is how long a record's sender waits at most (the publish timeout), counted from its cohort's
    first record (`Batch`), so every record waits between 0.9 and 1.0 times the bound. Before 2026-12-06 a
    batch took records for a tenth of the bound only: with acknowledgements slower than that and a record
    arriving faster than one per acknowledgement, a lane made batches faster than it sent them, and fell
    behind without end (tests/kafka/test_batching.py).
    """

    def __init__(self, producer: AIOKafkaProducer, *, bound: float, lane_records: int | None = None) -> None:
        self._producer = producer
        self._bound = bound
        self._lane_records = lane_records
        self._window = bound / 10
        self._cluster = producer.client.cluster
        self._loop = asyncio.get_running_loop()
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._pass: asyncio.Task[None] | None = None
        self._asides: dict[asyncio.Task[None], tuple[_Lane, Batch]] = {}
        self._closed: BaseException | None = None

    def partition(self, topic: str, key: bytes) -> int | None:
        """The partition aiokafka's default partitioner picks for `key`, or None before metadata is known."""
        partitions = self._cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        return partition_for(key, len(partitions))

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        *,
        alone: bool = False,
    ) -> tuple[Batch, int]:
        """Add one record to its partition's open batch: the batch and the record's index in it.
        `alone`: in a new batch that takes no other record (it still waits its turn in the partition).

        Raises ProducerClosed once the batcher is closed, and Stalled (`lane_records` set: the relay without a
        spool) while the partition holds `lane_records` unsettled records whose bound passed (answered pending):
        the record was not taken. A partition that keeps up is never refused: one that stalls, or falls behind
        (more than a full batch, BATCH_BYTES, arriving per acknowledgement: a lane sends one batch at a time),
        is. The idempotent producer retries a batch whose partition has a
        leader for as long as it runs (aiokafka expires only a leaderless one): a partition short of in-sync
        replicas (NOT_ENOUGH_REPLICAS) took every later record of its keys, each a pending delivery counted
        against RELAY_MAX_IN_FLIGHT, until no other partition's delivery was admitted either.
        """
        if self._closed is not None:
            raise ProducerClosed()
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = _Lane(topic, partition)
        waiting = lane.waiting
        now = self._loop.time()
        oldest = lane.sending or (waiting[0] if waiting else None)
        if self._lane_records is not None and oldest is not None and now - oldest.opened > self._bound:
            self._refuse_past(lane, now - self._bound, self._lane_records)
        if waiting and not alone:  # the batch waiting for its lane takes every record until it is sent or full
            last = waiting[-1]
            metadata = last.builder.append(timestamp=None, key=key, value=value, headers=headers)
            if metadata is not None:
                if now - last.latest() > self._window:
                    last.join(now, metadata.offset)  # a cohort of its own: its own bound
                return last, metadata.offset
        batch = Batch(self._producer.create_batch(), self._loop, opened=now, bound=self._bound)
        waiting.append(batch)
        metadata = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        if alone:
            batch.builder.close()  # a closed builder takes no more records: the next append opens a batch
        if lane.sending is None and self._pass is None:
            self._pass = self._start_pass()
        return batch, metadata.offset

    @staticmethod
    def _refuse_past(lane: _Lane, since: float, most: int) -> None:
        """Stalled if `lane` holds `most` or more unsettled records of batches opened before `since` (their bound has
        passed: each was answered pending). Asked only when its oldest batch is so: a sum over its batches."""
        batches = (batch for batch in (lane.sending, *lane.waiting) if batch is not None and batch.opened < since)
        overdue = sum(batch.overdue(since) for batch in batches)
        if overdue >= most:
            raise Stalled(
                f"partition {lane.partition} of {lane.topic}: {overdue} records unacknowledged past the bound"
            )

    def _start_pass(self) -> asyncio.Task[None]:
        """A pass serves every request's records: in an empty context, so none of their spans (nor log
        trace ids) is its."""
        return self._loop.create_task(self._submit_ready(), context=contextvars.Context())

    async def _submit_ready(self) -> None:
        """Hand every idle lane's oldest batch to aiokafka. With metadata known, nothing here yields. A lane whose
        topic has none (deleted, or being made again) is handed over in a task of its own: aiokafka waits for that
        metadata up to the delivery timeout, and the other lanes do not wait with it."""
        try:
            for lane in list(self._lanes.values()):
                if lane.sending is None and lane.waiting:
                    if self._cluster.partitions_for_topic(lane.topic):
                        await self._submit(lane, self._take(lane))
                    else:
                        self._aside(lane)
        finally:
            self._pass = None
        if any(lane.sending is None and lane.waiting for lane in self._lanes.values()):
            self._pass = self._start_pass()  # a lane freed while this pass waited

    def _aside(self, lane: _Lane) -> None:
        batch = self._take(lane)
        task = self._loop.create_task(self._submit(lane, batch), context=contextvars.Context())
        self._asides[task] = (lane, batch)  # held until done (the loop keeps only a weak reference to a task)
        task.add_done_callback(self._asides.pop)

    def _take(self, lane: _Lane) -> Batch:
        batch = lane.waiting.popleft()
        batch.builder.close()  # closed: aiokafka sends it at once instead of lingering for more
        lane.sending = batch
        return batch

    async def _submit(self, lane: _Lane, batch: Batch) -> None:
        try:
            delivery = await self._producer.send_batch(batch.builder, lane.topic, partition=lane.partition)
        except Exception as exc:  # not queued, so nothing of it was sent; any error, or the lane would stay busy
            self._sent(lane, batch, None, exc)
            return
        except asyncio.CancelledError:  # a wait for metadata ended: not queued either (aiokafka queues last)
            _dropped(lane, batch, self._closed)
            raise
        batch.sent = _queued(self._producer, TopicPartition(lane.topic, lane.partition), batch.builder)
        delivery.add_done_callback(lambda done: self._delivered(lane, batch, done))

    def _delivered(self, lane: _Lane, batch: Batch, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            self._sent(lane, batch, None, ProducerClosed())
            return
        error = delivery.exception()
        if getattr(error, "errno", None) in REJECTED_UNWRITTEN and getattr(batch.sent, "retry_count", 0) == 1:
            self._unsequence(lane, batch)  # drained once: not written. Drained again, an earlier send may have been
        self._sent(lane, batch, None if error is not None else delivery.result().offset, error)

    def _unsequence(self, lane: _Lane, batch: Batch) -> None:
        """Give back the sequence numbers of a batch the broker rejected unwritten, drained for sending once.

        aiokafka numbered its records when it sent it and keeps the numbers spent: the partition's next
        batch would then fail with OutOfOrderSequenceNumber, and so would every later one (Java gives
        the numbers back too). Safe here: a lane has one batch in flight, so none was numbered after it.
        Not for a batch aiokafka drained more than once (an answer lost, then a retry refused: a topic ACL
        revoked meanwhile): its first send may have been written, and numbers given back would make the
        partition's next batch of as many records a duplicate the broker acknowledges without writing it.
        Its numbers stay spent; the partition's next batch then fails (OutOfOrderSequenceNumber, or
        UnknownProducerId) and the producer is replaced: 503s, nothing lost. aiokafka counts drains, not
        sends: a batch put back unsent (its leader not connectable: NodeNotReady) counts twice, so a size
        refusal after a leader moved replaces the producer too, where giving back would have been safe.
        """
        manager = getattr(self._producer, "_txn_manager", None)
        count = batch.builder.record_count()
        if manager is not None and count:
            manager.increment_sequence_number(TopicPartition(lane.topic, lane.partition), -count)

    def _sent(self, lane: _Lane, batch: Batch, base_offset: int | None, error: BaseException | None) -> None:
        lane.sending = None
        batch.settle(base_offset, error)
        if lane.waiting and self._pass is None:
            self._pass = self._start_pass()

    def unsettled(self) -> list[asyncio.Future[int]]:
        """The futures of every batch not yet acknowledged or failed, submitted or not."""
        futures = [batch.future for lane in self._lanes.values() for batch in lane.waiting]
        futures += [lane.sending.future for lane in self._lanes.values() if lane.sending is not None]
        return futures

    async def flush(self) -> None:
        """Wait until every record appended so far is acknowledged or failed."""
        while futures := self.unsettled():
            await asyncio.wait(futures)

    def close(self, error: BaseException | None = None) -> None:
        """Take no more records, and fail the batches never handed to aiokafka (nothing of them was sent).

        Batches already submitted settle with aiokafka's own outcome; one still waiting for its topic's metadata
        (`_aside`) is failed too: a closed producer's client never answers that wait.
        """
        self._closed = error or ProducerClosed()
        for lane in self._lanes.values():
            while lane.waiting:
                lane.waiting.popleft().settle(None, error or ProducerClosed())
        for task, (lane, batch) in list(self._asides.items()):
            if task.done() and not task.cancelled():  # it handed the batch over (or failed it): aiokafka settles it
                continue
            _dropped(lane, batch, self._closed)  # settled here: a task cancelled before it started never runs its
            task.cancel()  # own `except`


def _dropped(lane: _Lane, batch: Batch, error: BaseException | None) -> None:
    """A batch never handed to aiokafka, given up (`close`, or the loop's end): failed, its lane freed, and no new pass
    started (the batcher is closed, or the loop is ending)."""
    if lane.sending is batch:
        lane.sending = None
    batch.settle(None, error or ProducerClosed())


def _queued(producer: Any, partition: TopicPartition, builder: Any) -> Any:
    """aiokafka's MessageBatch just queued for `builder` (its accumulator's private state: None if it changed,
    and then no sequence number is ever given back)."""
    accumulator = getattr(producer, "_message_accumulator", None)
    queued = getattr(accumulator, "_batches", {}).get(partition, ())
    return next((message for message in queued if getattr(message, "_builder", None) is builder), None)
