"""The publish path with a spool: Kafka first, the spool when Kafka does not acknowledge in time.

The publisher given here is built with RELAY_SPOOL_AFTER_SECONDS as its publish bound
(`spooler_from_settings`), so the bound costs one timer per cohort of a batch, as without a spool.

`publish()` answers one of four ways:
- an Ack: Kafka acknowledged within `RELAY_SPOOL_AFTER_SECONDS` (the spool is off this path);
- Spooled: the record's spool transaction is durable (fsync). If its first publish is still in the
  producer, the row is *held* until that publish settles, or `hold_bound` passes with Kafka up: acknowledged,
  the row goes; failed (or past the bound), the drainer publishes it. Delivery is at-least-once: a first
  publish that lands after its row was released, or a crash between an acknowledgement and the delete, writes
  the record twice;
- KafkaRefused: Kafka refused the record for good. It is not spooled (no retry can help); the caller
  moves it to the DLQ. KafkaDenied (an ACL) is not spooled either: a 503, as without a spool. A record
  that would go to the spool (an outage, or its key is spooled) for a topic a drain found denied is a
  KafkaDenied too, without trying Kafka. A topic's first record spooled during an outage cannot be
  known denied: it is answered 200, and waits in the spool for the ACL;
- Unavailable (503): neither happened (the spool is full or failed). If the first publish is still
  in the producer, it is a PublishPending, so the caller keeps its claim until it settles.

Per-key order: a key with records in the spool goes through the spool, and so does everything while the
last attempt to reach Kafka failed (no 2 s wait per request during an outage; the drainer asks Kafka's
metadata meanwhile, `KafkaProbe`, so that a spool that cannot write, or read, does not keep every delivery
from a Kafka that is back). A record that goes to the spool first waits until the key's
previous record is placed (acknowledged, spooled or refused): a key with a direct publish in flight is
treated as held, so its rows stay in arrival order in the spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay import tracing
from relay.errors import KafkaDenied, KafkaRefused, PublishPending, Unavailable
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import Pending
from relay.types import Ack, Publisher

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)
HOLD_CHECK_SECONDS = 5.0
"""While Kafka is marked down, how often a held row's follower asks whether it is back (`_until_release`)."""


@dataclass(frozen=True, slots=True)
class Spooled:
    row_id: int


@dataclass(eq=False, slots=True)
class _Turn:
    """One record of a key being placed. The key's next record waits for `placed` before it is spooled."""

    placed: asyncio.Future[None]
    spooling: bool = False


class Spooler:
    tracer: Tracer | None = None  # set by the wiring: a spool write gets a span

    def __init__(
        self, spool: Spool, drainer: Drainer, publisher: Publisher, *, after: float, hold_bound: float = 130.0
    ) -> None:
        self.spool = spool
        self.drainer = drainer
        self._publisher = publisher
        self._after = after  # the publisher's bound: a PublishPending raised here carries it
        self._hold_bound = hold_bound  # a held row is released to the drainer once Kafka has been up this long
        self._following: set[asyncio.Task[None]] = set()
        self._turns: dict[bytes, _Turn] = {}  # per key: its last record still being placed

    async def publish(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> Ack | Spooled:
        earlier = self._turns.get(key)
        turn = self._turns[key] = _Turn(asyncio.get_running_loop().create_future())
        try:
            return await self._place(Pending(topic, key, value, list(headers)), turn, earlier)
        finally:
            turn.placed.set_result(None)
            if self._turns.get(key) is turn:
                del self._turns[key]

    async def _place(self, record: Pending, turn: _Turn, earlier: _Turn | None) -> Ack | Spooled:
        spool_it = self.spool.holds(record.key) or not self.spool.kafka_ok or (earlier is not None and earlier.spooling)
        denied = self.drainer.denied.get(record.topic)
        if denied is not None and spool_it:  # a spool would 2xx a record Kafka denies: a 503, as without one
            raise KafkaDenied(denied)
        if spool_it:
            return Spooled(await self._put(record, turn, earlier))
        try:  # the publisher's own bound is RELAY_SPOOL_AFTER_SECONDS here: no timer per request
            ack = await self._publisher.publish(record.topic, record.key, record.value, record.headers)
        except (KafkaRefused, KafkaDenied):  # refused, not an outage: no reason to spool (nor to 2xx it)
            raise
        except PublishPending as pending:  # no acknowledgement in time: Kafka is down or slow
            self.spool.mark_kafka(False)
            return await self._spool_held(record, turn, earlier, asyncio.ensure_future(pending.outcome))
        except Unavailable:  # not written: Kafka is down, and the record goes to the spool
            self.spool.mark_kafka(False)
            return Spooled(await self._put(record, turn, earlier))
        self.drainer.denied.pop(record.topic, None)
        if not self.spool.kafka_ok:  # `mark_kafka(True)`, called only when it changes: every direct publish is here
            self.spool.mark_kafka(True)
        return ack

    async def _put(self, record: Pending, turn: _Turn, earlier: _Turn | None, *, held: bool = False) -> int:
        """Spool `record` after the key's previous record is placed, so the key's rows are in arrival order."""
        turn.spooling = True
        if earlier is not None:
            await asyncio.shield(earlier.placed)
        with tracing.child(self.tracer, "spool write"):  # until its transaction is durable (fsync)
            return await self.spool.put(record, held=held)

    async def _spool_held(
        self, record: Pending, turn: _Turn, earlier: _Turn | None, future: asyncio.Future[Ack]
    ) -> Spooled:
        # The follower starts once the held row is durable, even if this request is cancelled meanwhile:
        # a held row without one would block its key for the process's life.
        turn.spooling = True  # at once, as `_put` did before it ran as a task: the key's next record follows
        put = asyncio.ensure_future(self._put(record, turn, earlier, held=True))
        put.add_done_callback(lambda done: self._follow_once_put(done, record, future))
        try:
            row_id = await asyncio.shield(put)
        except Unavailable as refused:  # the spool's cause (spool_full, spool_error): its count and alert
            raise PublishPending(_wait(future), self._after, spool=refused) from None
        return Spooled(row_id)

    def _follow_once_put(self, put: asyncio.Future[int], record: Pending, future: asyncio.Future[Ack]) -> None:
        if put.cancelled() or put.exception() is not None:
            return  # not spooled: the caller answered 503 (PublishPending) and keeps the claim
        task = asyncio.create_task(self._follow(put.result(), record, future))
        self._following.add(task)
        task.add_done_callback(self._following.discard)

    async def _follow(self, row_id: int, record: Pending, outcome: asyncio.Future[Ack]) -> None:
        """Settle the held row once its first publish settles, or release it to the drainer past the bound with
        Kafka up (`_first_outcome`). Whatever the outcome (an unexpected error too), the row is settled: never held
        for good while Kafka answers."""
        acked = False
        try:
            await self._first_outcome(outcome)
            acked = True
            self.spool.mark_kafka(True)
        except (KafkaRefused, KafkaDenied):  # released: the drainer moves it to the DLQ, or it waits for the ACL
            self.spool.mark_kafka(True)  # Kafka answered: no outage (as a drain pass counts it)
        except Unavailable:
            self.spool.mark_kafka(False)
        except TimeoutError:
            logger.warning(
                "spooled record %d: its first publish did not settle within %gs; the drainer publishes it"
                " (at-least-once: it may be written twice)",
                row_id,
                self._hold_bound,
            )
        except Exception as exc:  # released: the drainer publishes it (at-least-once)
            logger.error("spooled record %d: its first publish failed: %s: %s", row_id, type(exc).__name__, exc)
        finally:
            await asyncio.shield(self.spool.settle(row_id, record, acked=acked))

    async def _first_outcome(self, outcome: asyncio.Future[Ack]) -> Ack:
        """The first publish's outcome, asked again at `_until_release`. Raises TimeoutError at the end of a
        bound when Kafka has been marked up for a whole bound (a producer that lost track of the publish: the
        row goes to the drainer). While Kafka fails, and for a bound after it is back, it waits on: the producer
        keeps a batch it sent while its partition has a leader in its metadata (aiokafka expires only a
        leaderless one), and writes it once Kafka is back, so a copy drained meanwhile was written behind it,
        twice (tests/faults/test_spool.py: 10 of 200 deliveries, a 15 s outage past an 11 s bound). What it does
        not see: one broker cut off from the relay while the deliveries of the moment go to the others'
        partitions, which answer; its held rows are then released, and may be written twice. A Kafka marked down
        at least once per bound (a publish slower than RELAY_SPOOL_AFTER_SECONDS does it) keeps the row held,
        and its key waiting, as long as it is."""
        settled = asyncio.ensure_future(_settled(outcome))
        try:
            while not (await asyncio.wait([settled], timeout=self._until_release()))[0]:
                if self.spool.kafka_ok and time.monotonic() - self.spool.kafka_up_since >= self._hold_bound:
                    raise TimeoutError
            return settled.result()
        finally:
            settled.cancel()  # released (or this follower cancelled): the wait, not the producer's batch

    def _until_release(self) -> float:
        """How long to wait before asking again: while Kafka is down, HOLD_CHECK_SECONDS at most (it may be back any
        time, and the bound counts from then: a release comes that much late at most); while it is up, what is
        left of the bound since it came back."""
        if not self.spool.kafka_ok:
            return min(self._hold_bound, HOLD_CHECK_SECONDS)
        return max(self._hold_bound - (time.monotonic() - self.spool.kafka_up_since), 0.001)

    async def settle(self, timeout: float) -> None:
        """After the producer's final flush, before the spool closes: wait (bounded) for the followers of
        held rows and for the drain publishes still in flight, so what Kafka acknowledged is deleted."""
        waiting = [*self._following, *self.drainer.sending()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    async def settle_all(self, timeout: float) -> None:
        """SIGTERM: wait (bounded) for the first publishes of held rows. Their followers are not cancelled:
        the producer's final flush may still acknowledge them, and `settle()` then waits for their deletes.
        A row still held when the spool closes is drained at the next start."""
        if self._following:
            await asyncio.wait(list(self._following), timeout=timeout)


async def _settled(outcome: asyncio.Future[Ack]) -> Ack:
    """The acknowledgement, following a PublishPending that the outcome itself may raise."""
    try:
        return await outcome
    except PublishPending as pending:
        return await _settled(asyncio.ensure_future(pending.outcome))


async def _wait(future: asyncio.Future[Ack]) -> Ack:
    return await future
