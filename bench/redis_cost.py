#!/usr/bin/env python3
"""What one webhook costs Redis in Redis mode: commands, bytes and Redis CPU, read from INFO.

    python bench/redis_cost.py [--count 20000] [--conns 64] [--rate 200]

Starts a real Kafka broker and Redis, serves `mytpe-relay serve` with Redis dedupe, and sends --count
webhooks twice: at saturation (closed loop, --conns connections: the batches are large) and at a low
fixed rate (open loop at --rate/s: the batches hold one or two operations). For each, Redis's own
counters before and after, per answered webhook: script calls (round trips), the commands the scripts
ran, bytes received and sent, and Redis's CPU. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, free_port  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.load import LoadGen, write_templates  # noqa: E402
from bench.run import PYTHON, Target, relay_env  # noqa: E402
from tests.servers import LocalRedis  # noqa: E402


async def counters(url: str) -> dict[str, float]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        stats, commands, cpu = await client.info("stats"), await client.info("commandstats"), await client.info("cpu")
    finally:
        await client.aclose()
    calls = {name.removeprefix("cmdstat_"): float(stat["calls"]) for name, stat in commands.items()}
    return {
        "script calls": calls.get("eval", 0) + calls.get("evalsha", 0),
        "commands in scripts": sum(calls.get(name, 0) for name in ("get", "set", "del", "pexpire")),
        "bytes in": float(stats["total_net_input_bytes"]),
        "bytes out": float(stats["total_net_output_bytes"]),
        "Redis CPU µs": (float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])) * 1e6,
    }


def per_webhook(before: dict[str, float], after: dict[str, float], answered: int) -> dict[str, float]:
    return {key: (after[key] - before[key]) / max(answered, 1) for key in before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    load = LoadGen.build()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        with LocalKafka(work / "kafka", fast_start=False) as kafka, LocalRedis(work / "redis") as redis:
            port = free_port()
            serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
            target = Target("relay-redis", [serve], relay_env(kafka.bootstrap, port, redis.url), [port], "/readyz")
            target.start(work)
            try:
                load.run(target.urls, mode="closed", conns=args.conns, duration=3, warmup=0)
                for label, options in (
                    (f"saturation, {args.conns} connections", {"mode": "closed", "conns": args.conns}),
                    (f"{args.rate:g}/s", {"mode": "open", "conns": 8, "rate": args.rate}),
                ):
                    before = asyncio.run(counters(redis.url))
                    limit = args.count if options["mode"] == "closed" else int(args.rate * 10)
                    result = load.run(target.urls, duration=600, warmup=0, limit=limit, **options)
                    rows[label] = per_webhook(before, asyncio.run(counters(redis.url)), result["ok"])
            finally:
                target.stop()
    keys = list(next(iter(rows.values())))
    print("Redis per answered webhook (one run; Redis dedupe; INFO stats, commandstats and cpu)")
    print("| load | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[key]:.2f}" for key in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
