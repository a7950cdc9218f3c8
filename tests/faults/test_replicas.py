"""Several relay processes behind one URL each, sharing one Redis and one Kafka.

Every delivery is sent to every replica at the same time (a retry landing on another pod, at its
worst). With shared dedupe each delivery must be in Kafka exactly once and every request answered
200. Then the same with one replica SIGKILLed mid-run.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable

import httpx2 as httpx
import pytest
from localkafka import LocalKafka

from tests.faults.harness import Delivery, RelayProcess, Sender, make_deliveries, reconcile
from tests.servers import LocalRedis

pytestmark = pytest.mark.faults
DELIVERIES = 1000
REPLICAS = 3
PARALLEL = 12  # deliveries in flight at once, each sent to every replica: 36 requests
BOUND = 100.0


def replicas(relay_factory: Callable[..., RelayProcess], redis: LocalRedis) -> list[RelayProcess]:
    prefix = f"r{uuid.uuid4().hex[:10]}"
    return [relay_factory(RELAY_DEDUPE_URL=redis.url, RELAY_TOPIC_PREFIX=prefix) for _ in range(REPLICAS)]


async def fan_out(
    senders: list[Sender], deliveries: list[Delivery], on_progress: Callable[[int], None] | None = None
) -> None:
    """Each delivery to every replica concurrently; each replica's sender retries like MyTPE."""
    gate = asyncio.Semaphore(PARALLEL)
    deadline = time.monotonic() + BOUND
    done = 0
    limits = httpx.Limits(max_connections=PARALLEL * REPLICAS)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(delivery: Delivery) -> None:
            nonlocal done
            async with gate:
                if time.monotonic() > deadline:
                    return
                await asyncio.gather(*(sender.deliver(client, delivery) for sender in senders))
                done += 1
                if on_progress is not None:
                    on_progress(done)

        await asyncio.gather(*(one(d) for d in deliveries))


def senders_for(processes: list[RelayProcess]) -> list[Sender]:
    return [Sender(f"{p.url}/webhooks/mytpe", attempts=6, max_backoff=1.0) for p in processes]


def merged(senders: list[Sender]) -> Sender:
    total = Sender("all replicas")
    total.requests = sum(s.requests for s in senders)
    return total


async def test_replicas_share_dedupe(broker: LocalKafka, relay_factory, redis: LocalRedis) -> None:
    processes = replicas(relay_factory, redis)
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in processes))
    deliveries = make_deliveries(DELIVERIES, seed=21)
    senders = senders_for(processes)
    await fan_out(senders, deliveries)
    prefix = processes[0].env["RELAY_TOPIC_PREFIX"]
    report = await reconcile(
        f"{REPLICAS} replicas, shared Redis", broker.bootstrap, prefix, deliveries, merged(senders)
    )
    assert report.requests == DELIVERIES * REPLICAS  # every request answered 2xx the first time
    assert report.ok_2xx == DELIVERIES * REPLICAS
    assert report.events_in_kafka == DELIVERIES
    assert report.acknowledged_missing == 0
    assert report.duplicates_of_acknowledged == 0


async def test_replica_killed_mid_run(broker: LocalKafka, relay_factory, redis: LocalRedis) -> None:
    processes = replicas(relay_factory, redis)
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in processes))
    deliveries = make_deliveries(DELIVERIES, seed=22)
    senders = senders_for(processes)
    killed = asyncio.Event()

    def on_progress(done: int) -> None:
        if done == DELIVERIES // 3 and not killed.is_set():
            killed.set()
            processes[-1].stop(signal.SIGKILL)
            senders[-1].stopped = True  # like a load balancer removing the dead pod

    await fan_out(senders, deliveries, on_progress)
    prefix = processes[0].env["RELAY_TOPIC_PREFIX"]
    report = await reconcile(
        f"{REPLICAS} replicas, one SIGKILLed", broker.bootstrap, prefix, deliveries, merged(senders)
    )
    assert killed.is_set()
    assert report.acknowledged == DELIVERIES  # the survivors acknowledged every delivery
    assert report.acknowledged_missing == 0
    # Duplicates are possible only for deliveries the killed replica had published but not yet marked
    # done (docs/guarantees.md §4, "the remaining window"): at most the PARALLEL deliveries in flight
    # at the kill. Measured 0; the summary table prints each run's figure.
    assert report.duplicates_of_acknowledged <= PARALLEL, report.duplicates_of_acknowledged
