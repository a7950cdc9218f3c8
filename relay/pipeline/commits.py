"""A shared store's commits, sent after the answer without awaiting them, and awaited at shutdown.

The record is durable once Kafka acknowledged it (or the spool wrote it), and a failed commit would not
change the answer (docs/guarantees.md §3), so the answer does not wait a Redis round trip for it. Until
the commit lands, the claim's lease holds the delivery like any attempt in flight. Each commit is the
store's batch reply future with a callback, not a task: no coroutine runs per commit."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from relay import tracing
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.tasks import stop_waiting
from relay.types import SendsCommits

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from relay.tracing.otel import Tracer

logger = logging.getLogger(__name__)
_UNANSWERED = {"mytpe.commit": "unanswered at shutdown"}


class Commits:
    def __init__(self, store: SendsCommits, metrics: DeliveryMetrics, tracer: Tracer | None) -> None:
        self._store = store
        self._tracer = tracer
        self._observe = metrics.dedupe_duration.labels("commit").observe
        self._failed = metrics.dedupe_errors.labels("commit").inc
        # Each commit on its way, by a serial number: it leaves in `_landed`, so that a commit has one
        # callback on its reply future (the store's), not a second one to leave this.
        self._pending: dict[int, asyncio.Future[object]] = {}
        self._sent = 0

    def send(self, delivery_id: str) -> None:
        """Queue the commit of `delivery_id`; its outcome is timed, counted when it failed, and said."""
        span = None
        if self._tracer is not None and self._tracer.sampled():  # the request's child, ended when it lands
            span = self._tracer.start("dedupe commit")
        self._sent = serial = self._sent + 1
        landed = partial(self._landed, serial, delivery_id, time.perf_counter(), span)
        try:
            sent = self._store.commit_soon(delivery_id, landed)
        except Exception as exc:  # the store has stopped (Unavailable): said and counted like a failure
            landed(exc)
            return
        self._pending[serial] = sent  # `landed` runs from a callback of `sent`: never before this line

    def _landed(
        self, serial: int, delivery_id: str, started: float, span: Span | None, error: BaseException | None
    ) -> None:
        self._pending.pop(serial, None)
        if isinstance(error, asyncio.CancelledError):  # the drain stopped waiting; it may land yet (drain says)
            tracing.end(span, attributes=_UNANSWERED)
            return
        self._observe(time.perf_counter() - started)
        if span is not None:  # sampled only: no call on an unsampled webhook
            tracing.end(span, error=error)
        if error is not None:  # the record is durable: the 2xx stands; only a retry could duplicate it
            self._failed()
            logger.warning("published %s but could not mark it done; a retry may publish it again", delivery_id)

    async def finish(self, timeout: float) -> int:
        """Wait up to `timeout` for the commits on their way; stop waiting for the rest (each may still
        reach Redis) and say how many that was."""
        return len(await stop_waiting(list(self._pending.values()), timeout))
