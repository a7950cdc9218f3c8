"""A pending record's claim, renewed a lease at a time while Kafka settles it (LateAcks._hold), with a fake store."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.errors import DedupeUnavailable, PublishPending
from relay.pipeline.late_acks import LateAcks
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.store_timing import StoreTiming
from relay.types import Ack
from tests.conftest import make_settings

LEASE = 0.3  # renewed every 0.1 s


class Renewals:
    """A store's `extend`: answers from `answers` in turn (True, False, an exception, or "hang"), then True."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.hanging = asyncio.Event()

    async def extend(self, key: str, seconds: float) -> bool:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else True
        if answer == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


def late_acks(store: Renewals, committed: list[str]) -> LateAcks:
    settings = make_settings(
        dedupe_lease_seconds=LEASE, publish_timeout_seconds=0.2, kafka_delivery_timeout_seconds=30.0
    )

    async def commit(delivery_id: str, *args: Any, **kwargs: Any) -> None:
        committed.append(delivery_id)

    async def release(delivery_id: str) -> bool:
        return True

    timing = StoreTiming(DeliveryMetrics(CollectorRegistry()), shared=True)
    return LateAcks(settings, store, timing, committed=commit, release=release)  # type: ignore[arg-type]


def pending(kafka: asyncio.Future[Ack]) -> PublishPending:
    async def outcome() -> Ack:
        return await kafka

    return PublishPending(outcome(), 0.2)


async def test_an_acknowledgement_during_a_slow_renewal_is_committed_at_once() -> None:
    """Review finding: the hold waited for each renewal's answer before it looked at Kafka's outcome again, so an
    acknowledgement that came while Redis was slow was committed only once that renewal answered (2 s, or more
    behind a stalled batch): a retry meanwhile got `in_flight`, not `duplicate`."""
    store, committed = Renewals(True, "hang"), list[str]()
    late = late_acks(store, committed)
    kafka: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
    late.settle("d1", pending(kafka), 0.0, None, None)  # type: ignore[arg-type]
    await asyncio.wait_for(store.hanging.wait(), 5)
    kafka.set_result(Ack("t", 0, 7))
    for _ in range(20):  # bounded: a few turns of the loop, not the renewal's answer
        if committed:
            break
        await asyncio.sleep(0.01)
    assert committed == ["d1"]
    await late.finish(1.0)


async def test_the_claim_is_renewed_until_the_store_has_nothing_to_renew_and_a_store_error_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Renewals(
        DedupeUnavailable("extend", OSError("down")), DedupeUnavailable("extend", OSError("down")), True, False
    )
    late = late_acks(store, [])
    kafka: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.WARNING):
        late.settle("d2", pending(kafka), 0.0, None, None)  # type: ignore[arg-type]
        for _ in range(1000):  # bounded (10 s): the fourth renewal, the one that finds nothing to renew
            if store.calls >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(LEASE)  # three more renewals' time: none comes
    assert store.calls == 4
    assert sum("could not extend the claim on d2" in r.getMessage() for r in caplog.records) == 1
    kafka.set_exception(OSError("never sent"))
    await late.finish(1.0)


async def test_a_renewal_that_failed_as_the_drain_gave_up_leaves_no_unretrieved_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review finding: a renewal that ended with a store error in the loop turn the drain cancelled the hold was
    never read, and asyncio logged 'Task exception was never retrieved', with a traceback, when it was collected."""
    store = Renewals(DedupeUnavailable("extend", OSError("down")))
    late = late_acks(store, [])
    kafka: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        late.settle("d3", pending(kafka), 0.0, None, None)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the hold starts its renewal, which fails at once
        await late.finish(0.0)  # the drain gives up on it in the same turn
        gc.collect()
        await asyncio.sleep(0)
    assert [r for r in caplog.records if r.name == "asyncio"] == []
