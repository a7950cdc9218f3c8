"""The dedupe store's operations as the deliverer sees them: a shared store's timed and counted by op."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from relay.errors import DedupeUnavailable
from relay.pipeline.metrics import DeliveryMetrics

T = TypeVar("T")
OPERATIONS = ("claim", "commit", "release", "extend")


class StoreTiming:
    """An in-process store answers in well under a microsecond: timing it would cost more than the
    operation, so its `dedupe_duration` series stay at 0 and its calls pass through as they are. A
    shared store (Redis) is timed per operation, and its errors are counted: by `__call__`, which wraps the
    call in a coroutine of its own (an extend, release or commit; one cancelled, which the drain cut, is not
    observed), or, for the claim on every webhook's path, by the caller around its own await (`shared`,
    `failed`, `took`), which spares that coroutine (bench/counted.py --dedupe)."""

    def __init__(self, metrics: DeliveryMetrics, *, shared: bool) -> None:
        self.shared = shared
        # Metric children resolved once: `labels()` takes a lock and builds a key per call.
        self._observe = {op: metrics.dedupe_duration.labels(op).observe for op in OPERATIONS} if shared else {}
        self._errors = metrics.dedupe_errors

    def __call__(self, op: str, call: Awaitable[T]) -> Awaitable[T]:
        return self._timed(op, call) if self.shared else call

    def failed(self, op: str) -> None:
        """Count a shared store's DedupeUnavailable for `op` (as `__call__` does)."""
        if self.shared:
            self._errors.labels(op).inc()

    def took(self, op: str, started: float) -> None:
        """Observe `op` of a shared store (only: the caller asks `shared` first), from `started`
        (`time.perf_counter`) to now. The deliverer's window around a claim is a little wider than
        `__call__`'s: it holds a sampled request's claim span, and failing open, the count and log line
        of the failure."""
        self._observe[op](time.perf_counter() - started)

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        observed = True
        try:
            return await call
        except DedupeUnavailable:
            self.failed(op)
            raise
        except asyncio.CancelledError:  # the drain cut it: its outcome unknown; the drain's lines say it
            observed = False  # its time is the drain's bound, not Redis's: as Commits leaves a cut commit out
            raise
        finally:
            if observed:
                self._observe[op](time.perf_counter() - started)
