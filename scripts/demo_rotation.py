#!/usr/bin/env python3
"""The quickstart's second demo: a secret rotation under traffic, against the MyTPE sandbox.

    scripts/demo_rotation.py --relay URL --sandbox URL --bootstrap HOST:PORT --prefix PREFIX

Registers the source `demo` on the sandbox (its secret goes into the sources file), has the sandbox
deliver lifecycles at 20/s with MyTPE's retries, runs `mytpe-relay webhook rotate` in the middle, then
counts: deliveries made, answered 2xx, answered 503 during the window, and found in Kafka (once each).
Exit 1 if a delivery is missing from Kafka or there twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.kafka.topics import metadata_client, state_of

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(ROOT / ".venv" / "bin" / "mytpe-relay")]
INSTANCE = "abc123-def456"


def call(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def webhook(*args: str) -> None:
    command = [*CLI, "webhook", *args, "--source", "demo", "--allow-http"]
    print("$ mytpe-relay webhook " + " ".join(args), flush=True)
    subprocess.run(command, check=True, timeout=180)  # noqa: S603


def generation(relay: str) -> float:
    with urllib.request.urlopen(relay + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
        for line in response.read().decode().splitlines():
            if line.startswith("mytpe_relay_config_generation "):
                return float(line.split()[1])
    return 0.0


async def in_kafka(bootstrap: str, prefix: str) -> Counter[str]:
    """How many times each CloudEvent id is in the family topics, read to their end offsets."""
    seen: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        async with metadata_client([bootstrap]) as client:
            for topic in (f"{prefix}.transaction", f"{prefix}.pay_link"):
                state = await state_of(client, topic)
                partitions += [TopicPartition(topic, partition) for partition in state.partitions or ()]
        consumer.assign(partitions)  # once: each assign() restarts the offset resets
        start = await consumer.beginning_offsets(partitions)
        for tp in partitions:  # an explicit position (see relay/ops/captured.py, DlqReader.open)
            consumer.seek(tp, start[tp])
        end = await consumer.end_offsets(partitions)
        for _ in range(600):  # bounded
            if all([await consumer.position(tp) >= end[tp] for tp in partitions]):
                break
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    seen[json.loads(record.value)["id"]] += 1
    finally:
        await consumer.stop()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--relay", "--sandbox", "--bootstrap", "--prefix"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    before = generation(args.relay)
    webhook("register")
    for _ in range(100):  # bounded: the relay reloads the file within a second
        if generation(args.relay) > before:
            break
        time.sleep(0.1)
    made = call(args.sandbox + "/sandbox/emit", {"hook": INSTANCE, "count": 240, "rate": 20})["deliveries"]
    print(f"the sandbox delivers {len(made)} webhooks at 20/s (3 attempts each, 2 s then 4 s apart)", flush=True)
    time.sleep(4)
    webhook("rotate", "--relay-url", args.relay, "--window-minutes", "5", "--verify-timeout", "60")
    for _ in range(600):  # bounded: 60 s for the last retries
        state = call(args.sandbox + "/sandbox/attempts")
        if len(state["deliveries"]) == len(made) and all(d["status"] != "pending" for d in state["deliveries"]):
            break
        time.sleep(0.1)
    tries = [t for d in state["deliveries"] for t in d["tries"]]
    seen = asyncio.run(in_kafka(args.bootstrap, args.prefix))
    lost = [i for i in made if not seen[i]]
    twice = [i for i in made if seen[i] > 1]
    print(
        f"rotation under traffic: {len(made)} deliveries, {len(tries)} attempts,"
        f" {sum(1 for t in tries if t == 503)} answered 503 during the window,"
        f" {sum(d['status'] == 'succeeded' for d in state['deliveries'])} acknowledged;"
        f" in Kafka: {sum(1 for i in made if seen[i])}, lost: {len(lost)}, twice: {len(twice)}"
    )
    return 1 if lost or twice else 0


if __name__ == "__main__":
    sys.exit(main())
