#!/usr/bin/env python3
"""The relay's publisher alone: no HTTP, no verification, no dedupe.

    python bench/producer.py --bootstrap HOST:PORT [--count 20000] [--concurrency 64]

Sends --count records of the relay's size (a CloudEvent of the sample body) through KafkaPublisher
(aiokafka with the relay's settings, records batched per partition by relay.batching) with
--concurrency publishes in flight, each awaited for its `acks=all` acknowledgement, on uvloop as the
relay runs. Prints one JSON object: records/s and the CPU microseconds this process spent per record,
this script's own semaphore and tasks included. That is what Kafka costs the relay per webhook.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.kafka.publisher import KafkaPublisher
from relay.mytpe import samples


async def measure(bootstrap: str, count: int, concurrency: int) -> dict[str, float]:
    publisher = KafkaPublisher(bootstrap_servers=[bootstrap], publish_timeout=10.0)
    await publisher.start(timeout=30)
    value = samples.build("transaction.completed", seed=1) * 2  # about an envelope's size
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            await publisher.publish("mytpe.transaction", f"entity-{n % 4096}".encode(), value, headers)

    try:
        await asyncio.gather(*(one(n) for n in range(1000)))  # warm-up: metadata, connections
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await publisher.stop()
    return {"records_per_s": count / wall, "cpu_us_per_record": cpu / count * 1e6, "count": count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    result = uvloop.run(measure(args.bootstrap, args.count, args.concurrency))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
