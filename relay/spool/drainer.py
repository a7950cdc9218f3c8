"""Publishes spooled records to Kafka: per key in order, deleted only once Kafka acknowledged them.

Each pass takes the oldest record of each key that nothing blocks (`Spool.heads`), publishes them
concurrently (different keys, so no order between them), and deletes each one as its acknowledgement
arrives (the deletes are group-committed). A key's next record is taken only after its previous one left
the spool. A record's publish, once started, is never cancelled nor repeated by this process: its row
stays *taken* until the publish settles, even across `stop()`. After a failure the drainer waits,
doubling up to 5 s, then tries again: Kafka is still down. A pass waits PASS_SECONDS at most for its
publishes (a drain's deadline otherwise): the slower go on, their rows taken, and the next pass takes other keys.

A record Kafka denies (an ACL on its topic, the operator's to fix) stays spooled and is retried with the
backoff; the topic is remembered in `denied` (new records of it are answered 503, not spooled) until a
record of it is acknowledged. Kafka answered: it does not count as an outage (`kafka_ok`).

A record Kafka refuses for good (too large, invalid, a policy) is moved to the DLQ (its bytes
and headers, with `reason: kafka_refused`, `kafka-error` and the topic it was for) and counted in
`mytpe_relay_quarantined_total{reason="kafka_refused"}`. If the DLQ refuses it too, it stays on disk
(`mytpe_relay_spool_stuck`) and its key waits for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import orjson

from relay import tracing
from relay.errors import KafkaDenied, KafkaRefused, PublishPending, Unavailable
from relay.spool.metrics import DrainMetrics
from relay.spool.probe import KafkaProbe
from relay.spool.recovery import Recovery
from relay.spool.spool import Spool
from relay.spool.store import Row
from relay.tracing.w3c import CREATED_HEADER
from relay.types import Publisher

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)
BATCH = 200
REFUSED = "kafka_refused"
DAMAGED = "spool_damaged"
"""A spooled row a column of which cannot be read back: moved to the DLQ, counted under this reason."""
DAMAGED_HEADER = "mytpe-relay-spool-row"
"""On a damaged row moved to the DLQ: its topic and its headers as the spool held them (`Row.damaged`)."""
SPOOL_ERROR_HEADER = "spool-error"
"""On a damaged row moved to the DLQ: what could not be read back."""
ACKED, ANSWERED, UNANSWERED = "acked", "answered", "unanswered"
Headers = list[tuple[str, bytes]]
SPOOLED_TOPIC_HEADER = "mytpe-relay-topic"
"""On a spooled record moved to the DLQ: the topic it was spooled for."""


class Drainer:
    recovery: Recovery | None = None  # RELAY_SPOOL_RECOVERY_CHECK: set by the wiring (relay/spool/recovery.py)
    tracer: Tracer | None = None  # set by the wiring: each drained record gets a span (relay.tracing)

    def __init__(self, spool: Spool, publisher: Publisher, metrics: DrainMetrics, *, dlq: str | None = None) -> None:
        self.spool, self._publisher, self._metrics, self._dlq = spool, publisher, metrics, dlq
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sending: dict[int, asyncio.Task[str]] = {}  # row id -> its publish, never cancelled by stop()
        self._in_flight = 0  # the bytes of the rows in `_sending`
        self._answered = True  # whether Kafka answered the last pass (a row, or its metadata): `_room`
        self._idle = False  # the last pass found no row it could take
        self._owed: dict[int, str] = {}  # rows acknowledged whose delete failed: counted once deleted (`_settled`)
        self._probe = KafkaProbe(spool, publisher)
        self.denied: dict[str, str] = {}
        """Topics Kafka denied the relay on (an ACL) in a drain, with the error: until a record of it is acked."""
        metrics.spool_held.set_function(lambda: len(spool.held))
        metrics.spool_denied_topics.set_function(lambda: len(self.denied))

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="spool-drainer")

    async def stop(self, timeout: float = 5.0) -> None:
        """Let the current pass settle within `timeout`, then stop. A publish still in flight after that
        keeps its row taken (never published again by this process); `drain()` waits for it."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self.spool.changed.set()
        _, pending = await asyncio.wait([task], timeout=timeout)
        for late in pending:
            late.cancel()  # the pass's publishes are tasks of their own: they go on
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        pause = 0.1
        while not self._stopping:
            if not self.spool.drainable():
                self.spool.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.spool.changed.wait(), 1.0)
                await self._probe()  # Kafka marked down, and no pass asks it: is it back?
                continue
            try:
                progressed = await self.pass_once()
            except Exception as exc:  # the next pass tries again; nothing leaves the spool unacknowledged
                logger.warning("spool drain pass failed: %s: %s", type(exc).__name__, exc)
                progressed = False
            pause = 0.1 if progressed else min(pause * 2, 5.0)
            if not progressed and not self._stopping:
                await self._probe()  # a pass that could not send (a read failed, the recovery check waits)
                await asyncio.sleep(pause)

    async def pass_once(self, timeout: float | None = None) -> bool:
        """One batch; True when something was acknowledged (and removed). `timeout`: wait no longer for its
        publishes (a drain's deadline); those still in flight go on, their rows taken, never sent again.

        While acknowledged rows wait for their delete, only that delete is retried: nothing new is
        published until the spool can delete again (bounded memory, and no republish loop)."""
        self._idle, ends = False, _deadline(timeout)
        self._count_owed()
        if self.spool.undeleted:
            done = await self.spool.retry_deletes()
            self._count_owed()
            return done
        recovered = self.recovery is None or await self.recovery.check(self.spool, _left(ends))  # recovery: first
        if not recovered or _short(ends):  # nor a batch sent with too little time left to wait for it
            return False
        reachable = self._answered or self.spool.kafka_ok
        if (room := _room(reachable, len(self._sending), self._in_flight)) <= 0:  # rows passes stopped waiting for
            return False
        rows = await self.spool.heads(room)
        self._idle = not rows  # only rows behind a held, taken, undeleted or stuck head are left
        if not rows:
            return False
        self.spool.take(rows)
        if self.recovery is not None:  # recovery check: before the pass is sent, its rows are marked in flight
            await self.recovery.mark(self.spool, rows)
        started, tasks = time.monotonic(), [self._send(row) for row in rows]
        # Never cancels them: a pass cut short (a deadline; in the background, PASS_SECONDS) leaves them to settle,
        # their rows taken, and the next pass takes other keys, not kept waiting by one slow partition.
        await asyncio.wait(tasks, timeout=PASS_SECONDS if ends is None else _left(ends))
        outcomes = [_outcome(task) for task in tasks]
        acked = outcomes.count(ACKED)
        answered = outcomes.count(UNANSWERED) < len(outcomes)
        self._answered = await self._probe.after_pass(answered, started, background=ends is None)
        if acked < len(rows):
            logger.warning("spool drain: %d of %d record(s) not acknowledged; retrying", len(rows) - acked, len(rows))
        return acked > 0

    def _send(self, row: Row) -> asyncio.Task[str]:
        task = asyncio.create_task(_traced(self.tracer, row, self._deliver))
        self._sending[row.id] = task
        self._in_flight += row.size
        task.add_done_callback(partial(self._sent, row.id, row.size))
        return task

    def _sent(self, row_id: int, size: int, task: asyncio.Task[str]) -> None:
        """A drain publish ended: one that raised (never one of `_deliver`'s outcomes) is said here, whether or not
        its pass still waited for it, and counts as unanswered there (`_outcome`)."""
        self._sending.pop(row_id, None)
        self._in_flight -= size
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("spool drain: record %d failed: %s: %s", row_id, type(exc).__name__, exc)

    async def _deliver(self, row: Row, headers: list[tuple[str, bytes]]) -> str:
        """Publish `row` with `headers` (or move it to the DLQ), then delete it: ACKED, ANSWERED (Kafka
        answered, the row stays: denied, or stuck) or UNANSWERED (no answer: Kafka is down)."""
        try:
            if row.damaged:  # a column cannot be read back: to the DLQ with what is left of it, for a person
                return await self._moved(row, DAMAGED, "a column cannot be read back", headers)
            try:
                acked = await _published(self._publisher, row.topic, row.key, row.value, headers)
            except KafkaDenied as denied:
                self._deny(row.topic, denied)
                return ANSWERED  # the row waits for the ACL, retried with the backoff
            except KafkaRefused as refused:
                return await self._moved(row, REFUSED, refused.detail, headers)
            return await self._settled(row, acked)
        finally:
            self.spool.release(row.id)

    async def _moved(self, row: Row, reason: str, detail: str, headers: Headers) -> str:
        """`_deliver`'s, to the DLQ: ANSWERED while the row waits (the DLQ's ACL; stuck: no outage either)."""
        try:
            acked = await self._quarantine(row, reason, detail, headers)
        except KafkaDenied as denied:  # the DLQ's ACL, not the row's topic's: the row waits for it
            self._deny(self._dlq or row.topic, denied)
            return ANSWERED
        return ANSWERED if row.id in self.spool.stuck else await self._settled(row, acked, reason)

    async def _settled(self, row: Row, acked: bool, moved: str = "") -> str:
        if not acked:
            return UNANSWERED
        self.denied.pop(row.topic, None)
        if await self.spool.delete([row]):  # counted once out of the spool (`spool drain` says both counts)
            _count(self._metrics, moved)
        else:  # counted when its delete, retried alone, succeeds
            self._owed[row.id] = moved
        return ACKED

    def _count_owed(self) -> None:
        """Count the rows owed whose delete succeeded since, whoever waited for it (a retry a stop cut short)."""
        for row_id in [row_id for row_id in self._owed if row_id not in self.spool.undeleted]:
            _count(self._metrics, self._owed.pop(row_id))

    def _deny(self, topic: str, denied: KafkaDenied) -> None:
        if topic not in self.denied:
            _say_denied(topic, denied)
        self.denied[topic] = denied.detail

    async def _quarantine(self, row: Row, reason: str, detail: str, hop: list[tuple[str, bytes]]) -> bool:
        """Move `row` to the DLQ (`reason`: Kafka refused it for good, or it is damaged); stuck when there is no
        DLQ, when it was the DLQ's own record refused, or when the DLQ refuses it too."""
        if self._dlq is None or (row.topic == self._dlq and reason == REFUSED):
            self.spool.stick(row, detail)
            return False
        try:
            acked = await _published(
                self._publisher, self._dlq, row.key, row.value, _dlq_headers(row, reason, detail, hop)
            )
        except KafkaRefused as again:
            self.spool.stick(row, f"{detail}, then the DLQ: {again.detail}")
            return False
        if acked:
            self.denied.pop(self._dlq, None)
            logger.warning("spooled record %d moved to the DLQ (%s): %s", row.id, reason, detail)
        return acked

    def sending(self) -> list[asyncio.Task[str]]:
        """The drain publishes still in flight (and their deletes)."""
        return list(self._sending.values())

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for the publishes still in flight and their deletes: after the producer flushed."""
        if self._sending:
            await asyncio.wait(list(self._sending.values()), timeout=timeout)

    async def drain(self, timeout: float) -> int:
        """Drain until empty or `timeout` passes (shutdown, `spool drain`). The entries left.

        Publishes a stopped pass left in flight are waited for first, never sent again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            if self._sending:
                await asyncio.wait(list(self._sending.values()), timeout=left)
                continue
            if not self.spool.drainable():
                break
            if not await self.pass_once(timeout=left):
                if self._idle and not self.spool.held:  # nothing can become drainable before the deadline
                    break
                await asyncio.sleep(min(0.5, max(deadline - loop.time(), 0)))
        self._count_owed()
        return self.spool.entries


async def _published(publisher: Publisher, topic: str, key: bytes, value: bytes, headers: Headers) -> bool:
    """True once Kafka acknowledged the record. A publish still pending is waited for, never repeated:
    the producer may still write it, and a second send could land it twice. Raises KafkaRefused."""
    try:
        await publisher.publish(topic, key, value, headers)
    except PublishPending as pending:
        try:
            await pending.outcome
        except (KafkaRefused, KafkaDenied):
            raise
        except Unavailable:
            return False
    except (KafkaRefused, KafkaDenied):
        raise
    except Unavailable:
        return False
    return True


def _room(reachable: bool, rows: int, size: int) -> int:
    """How many rows a pass may add to the `rows` publishes in flight (`size` bytes). Kafka unreachable (the last
    pass got no answer, not even its metadata, and it is marked down): up to BATCH in flight, no more (every row
    of the spool would). Reachable: a BATCH, until those in flight reach IN_FLIGHT_ROWS or IN_FLIGHT_BYTES, so
    that the other keys drain past a partition that never answers (a broker cut off, still its leader, whose
    deliveries mark Kafka down while the other partitions answer the passes)."""
    if not reachable:
        return BATCH - rows
    return BATCH if rows < IN_FLIGHT_ROWS and size < IN_FLIGHT_BYTES else 0


def _outcome(task: asyncio.Task[str]) -> str:
    """A drain publish's outcome for its pass: UNANSWERED while it runs, or if it raised (`Drainer._sent` says so)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return UNANSWERED
    return task.result()


def _count(metrics: DrainMetrics, moved: str) -> None:
    """A drained row out of the spool (`spool drain` says both counts)."""
    metrics.spool_drained.inc()
    if moved:  # to the DLQ, for this reason
        metrics.quarantined.labels(moved).inc()


PASS_SECONDS = 10.0
"""How long a background pass waits for its publishes (a drain's deadline bounds it otherwise): the slower go
on, their rows taken, while the next pass takes the other keys' heads."""
IN_FLIGHT_ROWS = 10 * BATCH
IN_FLIGHT_BYTES = 16 * 1024 * 1024
"""The drain publishes in flight (rows, and their bytes) past which no pass starts while Kafka answers (a pass
adds at most BATCH rows to them; while Kafka is down, one BATCH is all): publishes to a partition that never
answers (a broker cut off, still its leader) pile up there, in memory, and the other keys drain past them."""
MIN_WAIT = 0.1
"""Seconds a drain's pass must have left to send a batch: less, and it could only mark the batch unanswered."""


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _left(deadline: float | None) -> float | None:
    """The time left until `deadline` (None: no bound): what the recovery check used is not given again."""
    return None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.0)


def _short(deadline: float | None) -> bool:
    left = _left(deadline)
    return left is not None and left < MIN_WAIT


def _say_denied(topic: str, denied: KafkaDenied) -> None:
    logger.error(
        "spool: Kafka denies the relay on topic %s (%s); its records are answered 503 and its spooled"
        " rows stay spooled, retried, until the ACL is fixed",
        topic,
        denied.detail,
    )


def _dlq_headers(row: Row, reason: str, detail: str, hop: Headers) -> Headers:
    """A spooled row's headers in the DLQ: this hop's, why, the topic it was spooled for, and a damaged row's
    topic and headers as the spool held them, and a family record's creation context (`_created`)."""
    headers = [*((name, value) for name, value in hop if name not in _OURS), ("reason", reason.encode())]
    created = None if any(name == CREATED_HEADER for name, _ in hop) else _created(row.value)
    headers += [(CREATED_HEADER, created.encode())] if created else []
    headers.append(("kafka-error", detail.encode()) if reason == REFUSED else (SPOOL_ERROR_HEADER, detail.encode()))
    headers += [(SPOOLED_TOPIC_HEADER, row.topic.encode())] if row.topic else []
    return headers + ([(DAMAGED_HEADER, row.damaged)] if row.damaged else [])


_OURS = frozenset(("reason", "kafka-error", SPOOL_ERROR_HEADER, SPOOLED_TOPIC_HEADER, DAMAGED_HEADER))
"""The headers `_dlq_headers` writes: a spooled DLQ record's own are dropped (the damaged header keeps them)."""


def _created(value: bytes) -> str | None:
    """A spooled family record's creation context: its CloudEvent's `traceparent` (None for anything else: a DLQ
    row's raw body, which may hold a member of that name, is no CloudEvent of the relay's)."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("specversion") != "1.0":
        return None
    found = event.get("traceparent")
    return tracing.valid_traceparent(found) if isinstance(found, str) else None


async def _traced(tracer: Tracer | None, row: Row, deliver: Callable[[Row, Headers], Awaitable[str]]) -> str:
    """`deliver(row, headers)`; traced, in a send span of its own linked to the record's request: the record's
    `traceparent` header becomes this hop's, and its value (the CloudEvent's creation context) goes unchanged.
    A span the tracer cannot make (it raised) is logged, and the record sent untraced, as it was spooled."""
    if tracer is None:
        return await deliver(row, row.headers)
    try:
        span, headers = tracer.drain(row.topic, row.headers, row=row.id)
    except Exception as exc:  # tracing never decides whether a record drains (and `deliver` releases its row)
        logger.warning("spool drain: record %d sent untraced: %s: %s", row.id, type(exc).__name__, exc)
        return await deliver(row, row.headers)
    outcome = UNANSWERED
    try:
        outcome = await deliver(row, headers)
    finally:
        tracing.end(span, attributes={"mytpe.outcome": outcome})
    return outcome
