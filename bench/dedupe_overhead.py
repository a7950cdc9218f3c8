#!/usr/bin/env python3
"""Dedupe overhead per delivery, Redis vs memory, measured side by side in one run.

Starts Debian's redis-server on a free loopback port, then times claim+commit for N distinct
delivery ids through each store: sequentially (pure round-trip cost) and with C concurrent
deliveries (as under load). Reports microseconds per delivery and the Redis/memory ratio.
A benchmark, not a test: it asserts nothing and the machine is shared and noisy, so read the
ratios of one run, not the absolute figures across runs.

    python bench/dedupe_overhead.py [--count 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # tests.servers picks ports with it

from relay.dedupe.memory import MemoryDedupeStore
from relay.dedupe.redis_store import RedisDedupeStore
from relay.types import DedupeStore
from tests.servers import LocalRedis


async def claim_commit(store: DedupeStore, ids: list[str], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(delivery_id: str) -> None:
        async with gate:
            await store.claim(delivery_id, wait=5)
            await store.commit(delivery_id)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    return (time.perf_counter() - started) / len(ids) * 1e6


async def measure(count: int, concurrency: int, redis_url: str) -> list[tuple[str, float, float]]:
    rows = []
    for label, parallel in (("sequential", 1), (f"{concurrency} concurrent", concurrency)):
        memory = MemoryDedupeStore(ttl=3600, max_entries=count * 4)
        redis = RedisDedupeStore(redis_url, namespace=f"bench-{label}", ttl=3600, lease=15)
        await redis.start()
        try:
            await claim_commit(redis, [f"warm-{i}" for i in range(200)], parallel)  # connections, script cache
            memory_us = await claim_commit(memory, [f"m-{i}" for i in range(count)], parallel)
            redis_us = await claim_commit(redis, [f"r-{i}" for i in range(count)], parallel)
        finally:
            await redis.stop()
        rows.append((label, memory_us, redis_us))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, LocalRedis(Path(workdir)) as redis:
        rows = asyncio.run(measure(args.count, args.concurrency, redis.url))
    print(f"claim+commit per delivery, {args.count} distinct ids, one run")
    print("| mode | memory (µs) | redis (µs) | redis / memory |")
    print("|---|---|---|---|")
    for label, memory_us, redis_us in rows:
        print(f"| {label} | {memory_us:.1f} | {redis_us:.1f} | {redis_us / memory_us:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
