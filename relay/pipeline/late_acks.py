"""Deliveries whose publish is still pending in the producer when their answer goes (503 `kafka_timeout`, or the
spool's cause when it refused the record meanwhile): the claim is held, its lease extended, until Kafka settles
the record; then committed on a late
acknowledgement, else released so that a retry goes through. Drained at shutdown (`finish`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from relay import tracing
from relay.errors import KafkaRefused, PublishPending, Unavailable
from relay.mytpe.signatures import SignedHeaders
from relay.pipeline.store_timing import StoreTiming
from relay.pipeline.tasks import Tasks
from relay.settings import STORE_CLEANUP_SECONDS, Settings
from relay.types import Ack, DedupeStore

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Committed(Protocol):
    """The deliverer's `_committed`: timed, counted, marked done (`awaited`: the commit waited for)."""

    def __call__(
        self, delivery_id: str, ack: Ack, started: float, signed: SignedHeaders, *, awaited: bool = False
    ) -> Awaitable[None]: ...


Refused = Callable[[str], Awaitable[object]]
"""What to do with a record Kafka refused for good after its answer went: the relay's quarantine, given
Kafka's error (to the DLQ, as a refusal in time is)."""
RENEWALS = 3
"""A pending record's claim is renewed this many times per lease: a renewal that waits on a slow store still
lands before the lease ends."""
logger = logging.getLogger("relay.pipeline.deliverer")  # the name these lines had before this module was split out


class LateAcks:
    """The deliverer's publishes that Kafka has not settled yet, one task each."""

    def __init__(
        self,
        settings: Settings,
        dedupe: DedupeStore,
        store: StoreTiming,
        *,
        committed: Committed,
        release: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._settings = settings
        self._dedupe = dedupe
        self._store = store
        self._committed = committed  # the deliverer's: timed, counted, marked done
        self._release = release  # the deliverer's: whether the store released (else the lease expires)
        self._tasks = Tasks()
        self._finishing = False  # the drain has begun: a late acknowledgement's commit is awaited

    def __len__(self) -> int:
        return len(self._tasks)

    def settle(
        self,
        delivery_id: str,
        pending: PublishPending,
        started: float,
        signed: SignedHeaders,
        sending: Span | None,
        *,
        on_ack: Callable[[], None] | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        """Keep the claim until the producer settles the record: commit on a late ack, else release.
        The send span ends then too: at Kafka's acknowledgement, or its failure. `on_ack`: called once if Kafka
        acknowledges it (a quarantine's count). `on_refused`: called, once the claim is released, if Kafka
        refuses it for good (MyTPE may have stopped retrying: the DLQ keeps it)."""
        work = self._settle(delivery_id, pending, started, signed, sending, on_ack=on_ack, on_refused=on_refused)
        self._tasks.start(work)

    async def _settle(
        self,
        delivery_id: str,
        pending: PublishPending,
        started: float,
        signed: SignedHeaders,
        sending: Span | None,
        *,
        on_ack: Callable[[], None] | None,
        on_refused: Refused | None,
    ) -> None:
        # Awaited from the start, beside the lease's extension: an acknowledgement that comes while the
        # extension waits on Redis is kept, even if the drain gives up on this task then.
        outcome = asyncio.ensure_future(pending.outcome)
        try:
            await self._hold(delivery_id, outcome)
            ack = await outcome
        except asyncio.CancelledError as exc:  # the drain gave up on it, while extending or while waiting
            await self._abandoned(delivery_id, outcome, started, signed, sending, error=exc, on_ack=on_ack)
            raise
        except Exception as exc:
            outcome.cancel()  # done already, unless the extension raised: then no one would read it
            tracing.end(sending, error=exc)
            await _past_the_drain(self._unpublished(delivery_id, exc), delivery_id)
            if on_refused is not None and isinstance(exc, KafkaRefused):
                await _refused_late(delivery_id, exc, on_refused)
            return
        if on_ack is not None:
            on_ack()
        if not self._finishing:
            await self._acked_late(delivery_id, ack, started, signed, sending)
            return
        # The drain has begun and the store stops right after it: awaited, as a given-up one's is (`_abandoned`),
        # within the drain's bound for store operations, past which it is cut and said.
        committing = self._acked_late(delivery_id, ack, started, signed, sending, awaited=True)
        await _past_the_drain(committing, delivery_id, "commit (Kafka had acknowledged it)")

    async def _unpublished(self, delivery_id: str, error: Exception) -> None:
        released = await self._release(delivery_id)
        claim = "its claim is released" if released else "its claim is left to its lease"
        logger.warning("delivery %s was not published (%s); %s", delivery_id, error, claim)

    async def _abandoned(
        self,
        delivery_id: str,
        outcome: asyncio.Future[Ack],
        started: float,
        signed: SignedHeaders,
        sending: Span | None,
        *,
        error: BaseException,
        on_ack: Callable[[], None] | None,
    ) -> None:
        """Given up at the drain. Acknowledged meanwhile (while its lease was being extended), it is done:
        its commit awaited, as a release is (a shared store's commit is otherwise sent without waiting, and
        the store stops right after the drain); else its claim is released, so that a retry goes through
        (the record may still land: §4). Either is cut, and said, past the drain's bound for them (`finish`)."""
        acked = outcome.done() and not outcome.cancelled() and outcome.exception() is None
        try:
            if acked:
                if on_ack is not None:
                    on_ack()
                await self._acked_late(delivery_id, outcome.result(), started, signed, sending, awaited=True)
                return
            outcome.cancel()
            tracing.end(sending, error=error)
            await self._release(delivery_id)
        except asyncio.CancelledError:
            _cut(delivery_id, "commit (Kafka had acknowledged it)" if acked else "release")
            raise

    async def _acked_late(
        self,
        delivery_id: str,
        ack: Ack,
        started: float,
        signed: SignedHeaders,
        sending: Span | None,
        *,
        awaited: bool = False,
    ) -> None:
        tracing.acked(sending, ack.partition, ack.offset)
        await self._committed(delivery_id, ack, started, signed, awaited=awaited)
        logger.info(
            "delivery %s acknowledged late by Kafka; its dedupe commit is sent (a line says so if it fails)",
            delivery_id,
            extra={"delivery_id": delivery_id, "topic": ack.topic, "partition": ack.partition, "offset": ack.offset},
        )

    async def _hold(self, delivery_id: str, outcome: asyncio.Future[Ack]) -> None:
        """A shared store's claim is a lease: renew it, one lease at a time, while Kafka has not settled the record,
        up to the producer's delivery bound (its delivery timeout and the publish timeout), which it keeps for a
        record it has not sent yet; a batch it sent may be retried past it (docs/guarantees.md §3). So a replica
        that dies with the record pending, or a release that does not answer, leaves the mark one lease at most
        after its last renewal, not the whole bound (one extension to it held the mark 130 s by default). With the
        defaults that mark still outlives MyTPE's own attempts (docs/dedupe.md says why); it no longer outlives
        what comes later. A store that does not answer is said once; the renewals and the wait for Kafka go on."""
        lease = self._settings.dedupe_lease_seconds
        loop = asyncio.get_running_loop()
        until = loop.time() + self._settings.kafka_delivery_timeout_seconds + self._settings.publish_timeout_seconds
        said = False
        while not outcome.done() and loop.time() < until:
            renewal: asyncio.Future[bool] = asyncio.ensure_future(
                self._store("extend", self._dedupe.extend(delivery_id, lease))
            )
            try:  # Kafka's outcome is not kept waiting on a slow store: the commit goes as soon as it is acked
                either: list[asyncio.Future[Any]] = [renewal, outcome]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not renewal.done():  # settled meanwhile, or this task cancelled (the drain): never left behind
                    renewal.cancel()
                elif not renewal.cancelled():
                    renewal.exception()  # retrieved, whatever follows: never "Task exception was never retrieved"
            if not renewal.done() or renewal.cancelled():
                return
            try:
                if not renewal.result():
                    return  # no lease to renew: a store without one, or a mark already gone (said by the store)
            except Unavailable:
                if not said:
                    said = True
                    logger.warning("could not extend the claim on %s while Kafka settles it", delivery_id)
            await asyncio.wait([outcome], timeout=lease / RENEWALS)

    async def finish(self, timeout: float) -> int:
        """Wait up to `timeout` for the outcomes; give up on the rest (each then commits or releases, as
        `_abandoned` says; a release already under way goes on, `_past_the_drain`), each within
        STORE_CLEANUP_SECONDS, past which it is cut and said; and say how many that was."""
        self._finishing = True
        return await self._tasks.finish(timeout, STORE_CLEANUP_SECONDS)


async def _past_the_drain(work: Coroutine[Any, Any, None], delivery_id: str, step: str = "release") -> None:
    """Run `work` (a release, or a commit the drain awaits) to its end. If the drain gives up on this task
    meanwhile, it goes on within the drain's bound for store operations (`finish`), past which it is cut and
    said, as `_abandoned`'s are; the task then ends cancelled, given up on."""
    running = asyncio.ensure_future(work)
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        try:
            await running
        except asyncio.CancelledError:
            if running.cancelled():
                _cut(delivery_id, step)
            elif running.exception() is not None:  # it ended as the cut came, with a bug: said, not lost
                logger.error("delivery %s: its %s failed", delivery_id, step, exc_info=running.exception())
        raise


async def _refused_late(delivery_id: str, refused: KafkaRefused, on_refused: Refused) -> None:
    """To the DLQ (`on_refused`), as a refusal in time is: its claim taken again there. Pending there, its own late
    acknowledgement keeps and counts it; a failure, or a cut at the drain, is said (kept nowhere then, unless
    MyTPE retries)."""
    logger.warning("delivery %s refused by Kafka for good after its answer (%s); to the DLQ", delivery_id, refused)
    try:
        await on_refused(refused.detail)
    except PublishPending:  # in the producer: settled as any pending publish (LateAcks), counted once acked
        pass
    except asyncio.CancelledError:
        logger.error("delivery %s: its move to the DLQ was cut at the drain's bound; it may not be kept", delivery_id)
        raise
    except Exception as exc:  # the DLQ refused it too, or did not answer: MyTPE's retry, if any, tries again
        logger.error("delivery %s: the DLQ did not take it after Kafka refused it: %s", delivery_id, exc)


def _cut(delivery_id: str, step: str) -> None:
    logger.warning(
        "delivery %s: its %s was cut at the drain's bound; it may still reach the store, else the claim holds"
        " until its lease ends",
        delivery_id,
        step,
    )
