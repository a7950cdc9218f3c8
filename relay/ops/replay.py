"""Replay signed deliveries through the relay's own pipeline, idempotently.

- From a file of captured requests: each entry is handled as if MyTPE had just redelivered it
  (accepted, duplicate, or quarantined), except that the replay window is waived: the entries are
  old by nature, and the operator chose them. The signature is still checked against the secrets.
- From the DLQ: each quarantined record is re-verified (the DLQ keeps the signature headers), then
  routed again, so records the relay could not route before a fix (a new family in `RELAY_ROUTES`)
  reach their topic. Records still unusable stay in the DLQ untouched.

Both dedupe through `RELAY_DEDUPE_URL`: with the relay's shared store, a second run, or a delivery the
live relay already published, is a `duplicate`. A DLQ record is deduplicated under its own key
(`REROUTED` + delivery id), because quarantining it already claimed the delivery id itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from relay import tracing
from relay.dedupe.factory import dedupe_from_settings
from relay.errors import KafkaRefused, RelayError, StartupError, Unavailable, UnknownSource
from relay.kafka.publisher import KafkaPublisher
from relay.kafka.topics import TopicUnreadable
from relay.metrics import Metrics
from relay.mytpe.payload import Unusable
from relay.ops.captured import Captured, DlqReader, DlqStalled, count_lines, read_file
from relay.ops.interrupt import to_the_end
from relay.ops.progress import Progress
from relay.pipeline.compose import compose
from relay.pipeline.records import KAFKA_REFUSED, REVERIFIED_HEADER, SOURCE_HEADER, Outcome
from relay.pipeline.relay import Relay
from relay.settings import Settings
from relay.sources.config import BASE_PATH, Source, SourceSet
from relay.sources.registry import SourceRegistry
from relay.tracing.w3c import CREATED_HEADER

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from relay.pipeline.deliverer import Deliverer
    from relay.tracing.otel import Tracer
    from relay.types import DedupeStore

ANY_AGE = 10**12  # seconds: the replay window, waived
REROUTED = "rerouted:"  # the dedupe key of a record re-published from the DLQ: REROUTED + delivery id
WINDOW = 64  # publishes in flight
DURABLE = frozenset({"accepted", "duplicate"})
_EXAMPLES = 20


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    processed: int = 0
    stopped: str | None = None
    """Why the run stopped before the end (Kafka or the dedupe store unavailable); rerun to resume."""

    def add(self, origin: str, outcome: str) -> None:
        self.processed += 1
        self.counts[outcome.partition(":")[0]] += 1
        if outcome not in DURABLE and outcome != "would_publish" and len(self.problems) < _EXAMPLES:
            self.problems.append(f"{origin}: {outcome}")

    @property
    def complete(self) -> bool:
        """Every entry is `accepted` or `duplicate` (or would be published, in a dry run). A duplicate is a delivery
        id the relay has already: on a family topic, or quarantined in the DLQ, where a file replay leaves it."""
        return self.stopped is None and set(self.counts) <= DURABLE | {"would_publish"}


async def replay(
    relay: Relay,
    entries: AsyncIterable[Captured],
    *,
    sources: SourceRegistry,
    from_dlq: bool,
    dry_run: bool,
    progress: Progress,
    clock: Callable[[], float] = time.time,
    window: int = WINDOW,
    tracer: Tracer | None = None,
) -> Report:
    """Each entry once. Up to `window` publishes are in flight, but the entries of one record key
    (one entity) are published one after another, in the order read. After an `unavailable`, nothing
    new starts: a rerun resumes, idempotently. Cancelled (Ctrl-C, or SIGTERM through `as_ctrl_c`), nothing
    new starts either, and the publishes in flight settle before the cancellation goes on: each one Kafka
    acknowledged has its commit sent, each one that failed its claim released (`run_replay`'s drain then waits
    for them; one whose publish timed out is left to that drain, as at any end of a run). `tracer`: each entry
    in a trace of its own."""
    report = Report()
    flight = _Flight(report, progress, window)

    def step_of(entry: Captured) -> Step:
        prepare = partial(_prepare, relay, sources.current, entry, from_dlq=from_dlq, dry_run=dry_run, now=clock())
        return prepare() if tracer is None else _traced(tracer, entry, prepare, from_dlq=from_dlq)

    try:
        await _feed(entries, flight, step_of)
        await flight.finish()
    except asyncio.CancelledError:  # asyncio.run's, after a second Ctrl-C, stops this wait too
        await flight.finish()
        progress.finish(report.processed, report.counts)  # the bar's line ends before the line saying why
        raise
    progress.finish(report.processed, report.counts)
    return report


async def _feed(entries: AsyncIterable[Captured], flight: _Flight, step_of: Callable[[Captured], Step]) -> None:
    """Start each entry's publish, or record its outcome, until the entries end or the run stops."""
    report = flight.report
    try:
        async for entry in entries:
            flight.harvest()
            if report.stopped:
                break
            step = step_of(entry)
            if isinstance(step, str):
                flight.record(entry.origin, step)
            else:
                await flight.start(entry.origin, *step)
    except DlqStalled as exc:  # the first reason to stop is the one said: a publish that failed before it
        flight.harvest()
        report.stopped = report.stopped or str(exc)


Send = Callable[[], Awaitable[Outcome]]
Step = str | tuple[bytes, Send]
"""An entry's outcome decided without I/O, or its record key and the publish to run."""


class _Flight:
    """The publishes in flight, chained per record key."""

    def __init__(self, report: Report, progress: Progress, window: int) -> None:
        self.report = report
        self._progress = progress
        self._window = window
        self._tasks: dict[asyncio.Task[str], tuple[str, bytes]] = {}
        self._last: dict[bytes, asyncio.Task[str]] = {}
        self._failed: set[bytes] = set()  # the keys whose publish could not be settled

    def record(self, origin: str, outcome: str) -> None:
        self.report.add(origin, outcome)
        if outcome.startswith("unavailable") and self.report.stopped is None:
            self.report.stopped = f"{origin}: {outcome}"
        self._progress.update(self.report.processed, self.report.counts)

    async def start(self, origin: str, key: bytes, send: Send) -> None:
        """Start `send` after the previous entry of `key`. While the window is full this waits, and what ends
        meanwhile may stop the run: then nothing new starts, and an entry whose entity failed is said so."""
        while len(self._tasks) >= self._window:
            await self._collect()
        if key in self._failed:
            if isinstance(send, _TracedSend):
                send.skipped(AFTER_FAILURE)
            self.record(origin, AFTER_FAILURE)
            return
        if self.report.stopped:
            if isinstance(send, _TracedSend):
                send.skipped("not started: the run stopped")
            return
        task = asyncio.create_task(_after(self._last.get(key), send))
        self._tasks[task] = (origin, key)
        self._last[key] = task

    async def finish(self) -> None:
        while self._tasks:
            await self._collect()

    def harvest(self) -> None:
        """Record the publishes that have finished, without waiting."""
        self._settled([task for task in self._tasks if task.done()])

    async def _collect(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self._settled(done)

    def _settled(self, tasks: Iterable[asyncio.Task[str]]) -> None:
        for task in tasks:
            origin, key = self._tasks.pop(task)
            if self._last.get(key) is task:
                del self._last[key]
            if task.result().startswith("unavailable"):
                self._failed.add(key)
            self.record(origin, task.result())


AFTER_FAILURE = "unavailable:after_earlier_failure"


async def _after(previous: asyncio.Task[str] | None, send: Send) -> str:
    """Publish once the previous entry of the same key is settled; not at all if it could not be."""
    if previous is not None:
        await asyncio.wait([previous])
        if previous.result().startswith("unavailable"):
            if isinstance(send, _TracedSend):
                send.skipped(AFTER_FAILURE)
            return AFTER_FAILURE
    try:
        outcome = await send()
    except Unavailable as exc:
        return f"unavailable:{exc.cause}"
    return outcome.status if outcome.status in DURABLE else f"{outcome.status}:{outcome.reason}"


def _prepare(
    relay: Relay, current: SourceSet, entry: Captured, *, from_dlq: bool, dry_run: bool, now: float
) -> str | tuple[bytes, Send]:
    """The outcome of an entry decided without I/O, else the record key and the publish to run."""
    if entry.problem is not None:
        return "unreadable"
    received_at = entry.received_at or datetime.fromtimestamp(now, UTC)
    source = source_of(current, entry)
    try:
        if source is None:
            raise UnknownSource
        signed = relay.verify(entry, entry.body, source, now=now, window=ANY_AGE)
        created_in = tracing.valid_traceparent(_first(entry, CREATED_HEADER)) if from_dlq else None
        reverified = from_dlq and _first(entry, REVERIFIED_HEADER) == "true"  # relayed from parking, then kept
        delivery_id, record, key = relay.build(
            signed, entry.body, source, received_at=received_at, created_in=created_in, reverified=reverified
        )
    except RelayError as exc:
        return f"rejected:{exc.reason}"
    except Unusable as exc:
        if from_dlq or dry_run or source is None:  # a DLQ record stays where it is
            return f"unusable:{exc.reason}"
        quarantine = partial(relay.quarantine, signed, entry, entry.body, source, exc.reason, key=exc.key)
        return signed.delivery_id.encode(), quarantine
    if dry_run:
        return "would_publish"
    key = REROUTED + key if from_dlq else key
    send = partial(relay.deliver, delivery_id, record, signed, key=key, source=source.name)
    keep = None if from_dlq else partial(relay.quarantine, signed, entry, entry.body, source, KAFKA_REFUSED, key=key)
    return record.key, partial(_refused_for_good, send, keep, delivery_id)


async def _refused_for_good(
    send: Send, quarantine: Callable[..., Awaitable[Outcome]] | None, delivery_id: str
) -> Outcome:
    """`send()`; a record Kafka refuses for good (too large for its topic) goes to the DLQ, as the live relay
    sends it (`quarantine`), or, read from the DLQ, stays there (`refused:kafka_refused`): not a stop that every
    rerun would meet again, unless the DLQ refuses it too (`unavailable:kafka_refused`, the live relay's 503)."""
    try:
        return await send()
    except KafkaRefused as refused:
        if quarantine is None:
            return Outcome("refused", delivery_id, KAFKA_REFUSED)
        return await quarantine(error=refused.detail)


def _first(entry: Captured, name: str) -> str | None:
    values = entry.getlist(name)
    return values[0] if values else None


def _traced(tracer: Tracer, entry: Captured, prepare: Callable[[], Step], *, from_dlq: bool) -> Step:
    """`prepare()` in a trace of its own, its publish too. From the DLQ, linked to the context the webhook
    came in (`mytpe-relay-created-traceparent`); from a file, linked to nothing: the relay never reads a
    `traceparent` from a webhook request, captured or not.

    A record rebuilt from the DLQ keeps the creation context its request gave it (the CloudEvent's
    `traceparent`); the record's `traceparent` header is this replay's (its hop)."""
    span = tracer.start(
        "replay",
        attributes={"mytpe.replay.origin": entry.origin[:200]},
        links=tracer.links(_first(entry, CREATED_HEADER)) if from_dlq else (),
        root=True,
    )
    with tracer.use(span):
        step = prepare()
    if isinstance(step, str):
        span.set_attribute("mytpe.outcome", step)
        span.end()
        return step
    key, send = step
    return key, _TracedSend(tracer, span, send)


class _TracedSend:
    """An entry's publish in its replay span, which ends with it, or when it is skipped (`skipped`)."""

    def __init__(self, tracer: Tracer, span: Span, send: Send) -> None:
        self._tracer = tracer
        self._span = span
        self._send = send

    async def __call__(self) -> Outcome:
        try:
            with self._tracer.use(self._span):
                outcome = await self._send()
        except BaseException as exc:
            tracing.end(self._span, error=exc)
            raise
        tracing.end(self._span, attributes={"mytpe.outcome": outcome.status})
        return outcome

    def skipped(self, outcome: str) -> None:
        tracing.end(self._span, attributes={"mytpe.outcome": outcome})


def source_of(current: SourceSet, entry: Captured) -> Source | None:
    """The source whose secrets verify `entry`: the one its `mytpe-relay-source` header names (DLQ
    records carry it), else the source at /webhooks/mytpe, else the only source there is."""
    named = entry.getlist(SOURCE_HEADER)
    if named:
        return current.by_name(named[0])
    default = current.by_path.get(BASE_PATH)
    if default is not None:
        return default
    only = list(current.by_path.values())
    return only[0] if len(only) == 1 else None


async def run_replay(
    settings: Settings, file: Path | None, *, dry_run: bool, show_progress: bool, tracer: Tracer | None = None
) -> Report:
    """Replay `file`, or the DLQ when it is None, through a relay pipeline of this process (`tracer`: each
    entry in a trace of its own).

    Raises StartupError when Kafka cannot be reached. RELAY_DEDUPE_FAIL_OPEN is ignored: a dedupe store that does
    not answer stops the run (`unavailable:dedupe_error`), never an entry published unclaimed.
    """
    settings = dataclasses.replace(settings, dedupe_fail_open=False)
    publisher = KafkaPublisher.from_settings(settings)
    dedupe = dedupe_from_settings(settings)
    parts = compose(settings, publisher=publisher, dedupe=dedupe, metrics=Metrics(), tracer=tracer)
    relay, sources = parts.relay, parts.sources
    try:
        if not dry_run:  # a dry run publishes nothing and claims nothing
            await dedupe.start()
            await publisher.start(timeout=settings.startup_timeout_seconds)
        if file is None:
            return await _replay_dlq(
                relay, sources, settings, dry_run=dry_run, show_progress=show_progress, tracer=tracer
            )
        progress = Progress(count_lines(file), stream=sys.stderr, enabled=show_progress)
        entries = _aiter(read_file(file))
        return await replay(
            relay, entries, sources=sources, from_dlq=False, dry_run=dry_run, progress=progress, tracer=tracer
        )
    finally:
        if not dry_run:  # a signal meanwhile (SIGTERM after the run, while Kafka is slow to flush) cuts none of it
            await to_the_end(_close(publisher, parts.deliverer, dedupe, settings))


async def _close(publisher: KafkaPublisher, deliverer: Deliverer, dedupe: DedupeStore, settings: Settings) -> None:
    """Flush the producer, then send the commits and releases that settles, then close the store."""
    await publisher.stop(timeout=settings.flush_timeout_seconds)
    await deliverer.drain(timeout=1.0)
    await dedupe.stop()


async def _replay_dlq(
    relay: Relay,
    sources: SourceRegistry,
    settings: Settings,
    *,
    dry_run: bool,
    show_progress: bool,
    tracer: Tracer | None,
) -> Report:
    dlq = settings.router().dlq
    reader = DlqReader(settings.kafka_bootstrap_servers, dlq, security=settings.kafka_security)
    try:
        await reader.open()
    except (KafkaError, TopicUnreadable) as exc:
        await reader.close()
        raise StartupError(f"cannot read {dlq}: {exc}") from None
    try:
        progress = Progress(reader.total, stream=sys.stderr, enabled=show_progress)
        entries = reader.records()
        return await replay(
            relay, entries, sources=sources, from_dlq=True, dry_run=dry_run, progress=progress, tracer=tracer
        )
    finally:
        await reader.close()


async def _aiter(items: Iterable[Captured]) -> AsyncIterator[Captured]:
    for item in items:
        yield item
