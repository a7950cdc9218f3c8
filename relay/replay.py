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

import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.errors import KafkaError

from relay.captured import Captured, DlqReader, DlqStalled, count_lines, read_file
from relay.errors import RelayError, StartupError, Unavailable
from relay.metrics import Metrics
from relay.payload import Unusable
from relay.pipeline import Relay
from relay.progress import Progress
from relay.publisher import KafkaPublisher
from relay.settings import Settings
from relay.stores import dedupe_from_settings

ANY_AGE = 10**12  # seconds: the replay window, waived
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
        """Every entry is on a family topic (or would be, in a dry run)."""
        return self.stopped is None and set(self.counts) <= DURABLE | {"would_publish"}


async def replay(
    relay: Relay,
    entries: AsyncIterable[Captured],
    *,
    from_dlq: bool,
    dry_run: bool,
    progress: Progress,
    clock: Callable[[], float] = time.time,
) -> Report:
    """Each entry once, in order; stops at the first `unavailable` (a rerun resumes, idempotently)."""
    report = Report()
    try:
        async for entry in entries:
            outcome = await _one(relay, entry, from_dlq=from_dlq, dry_run=dry_run, now=clock())
            report.add(entry.origin, outcome)
            progress.update(report.processed, report.counts)
            if outcome.startswith("unavailable"):
                report.stopped = f"{entry.origin}: {outcome}"
                break
    except DlqStalled as exc:
        report.stopped = str(exc)
    progress.finish(report.processed, report.counts)
    return report


async def _one(relay: Relay, entry: Captured, *, from_dlq: bool, dry_run: bool, now: float) -> str:
    """The outcome code of one entry: `accepted`, `duplicate`, `would_publish`, or `kind:reason`."""
    if entry.problem is not None:
        return "unreadable"
    received_at = entry.received_at or datetime.fromtimestamp(now, UTC)
    try:
        signed = relay.verify(entry, entry.body, now=now, window=ANY_AGE)
        if dry_run:
            relay.build(signed, entry.body, received_at=received_at)
            return "would_publish"
        if from_dlq:
            outcome = await relay.reroute(signed, entry.body, received_at=received_at)
        else:
            outcome = await relay.relay_signed(signed, entry, entry.body, received_at=received_at)
    except Unusable as exc:
        return f"unusable:{exc.reason}"
    except Unavailable as exc:
        return f"unavailable:{exc.cause}"
    except RelayError as exc:
        return f"rejected:{exc.reason}"
    return outcome.status if outcome.status in DURABLE else f"{outcome.status}:{outcome.reason}"


async def run_replay(settings: Settings, file: Path | None, *, dry_run: bool, show_progress: bool) -> Report:
    """Replay `file`, or the DLQ when it is None, through a relay pipeline of this process.

    Raises StartupError when Kafka (or the dedupe store) cannot be reached.
    """
    publisher = KafkaPublisher.from_settings(settings)
    dedupe = dedupe_from_settings(settings)
    relay = Relay(settings, publisher=publisher, dedupe=dedupe, metrics=Metrics())
    try:
        if not dry_run:  # a dry run publishes nothing and claims nothing
            await dedupe.start()
            await publisher.start(timeout=settings.startup_timeout_seconds)
        if file is None:
            return await _replay_dlq(relay, settings, dry_run=dry_run, show_progress=show_progress)
        progress = Progress(count_lines(file), stream=sys.stderr, enabled=show_progress)
        return await replay(relay, _aiter(read_file(file)), from_dlq=False, dry_run=dry_run, progress=progress)
    finally:
        if not dry_run:
            await publisher.stop(timeout=settings.flush_timeout_seconds)
            await relay.drain(timeout=1.0)
            await dedupe.stop()


async def _replay_dlq(relay: Relay, settings: Settings, *, dry_run: bool, show_progress: bool) -> Report:
    reader = DlqReader(settings.kafka_bootstrap_servers, relay.router.dlq)
    try:
        await reader.open()
    except KafkaError as exc:
        await reader.close()
        raise StartupError(f"cannot read {relay.router.dlq}: {exc}") from None
    try:
        progress = Progress(reader.total, stream=sys.stderr, enabled=show_progress)
        return await replay(relay, reader.records(), from_dlq=True, dry_run=dry_run, progress=progress)
    finally:
        await reader.close()


async def _aiter(items: Iterable[Captured]) -> AsyncIterator[Captured]:
    for item in items:
        yield item
