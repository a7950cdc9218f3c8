#!/usr/bin/env python3
"""The spool's drain rate against its size, in one run: a spool of N rows (1 KiB values over 1,000 keys,
as an outage leaves it) drained by the relay's own Drainer and KafkaPublisher into a real broker.

    .venv/bin/python bench/drain.py [--sizes 20000,100000] [--out bench/results]

A drain that grows linearly keeps its rate as the spool grows: the ratio of the largest spool's rate to
the smallest's is the figure to read (issue 23 item 6: the drain used to rescan every row per batch).
Reports, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka  # noqa: E402

from relay.kafka.publisher import KafkaPublisher  # noqa: E402
from relay.metrics import Metrics  # noqa: E402
from relay.spool.drainer import Drainer  # noqa: E402
from relay.spool.spool import Spool  # noqa: E402
from relay.spool.store import Pending  # noqa: E402

TOPIC = "bench.drain"
KEYS = 1000
VALUE = b"x" * 1024


async def fill(spool: Spool, rows: int) -> None:
    """`rows` records, group-committed a thousand at a time (as concurrent requests would be)."""
    for start in range(0, rows, 1000):
        records = [Pending(TOPIC, b"key-%d" % (n % KEYS), VALUE, []) for n in range(start, min(start + 1000, rows))]
        await asyncio.gather(*(spool.put(record) for record in records))


async def drain_rate(bootstrap: str, directory: Path, rows: int) -> dict[str, Any]:
    spool = Spool(directory, max_bytes=1 << 40, metrics=Metrics())
    await spool.open()
    await fill(spool, rows)
    publisher = KafkaPublisher(bootstrap_servers=[bootstrap], publish_timeout=30, topics=[TOPIC])
    await publisher.start(timeout=30)
    try:
        started = time.perf_counter()
        left = await Drainer(spool, publisher, Metrics()).drain(timeout=600)
        seconds = time.perf_counter() - started
    finally:
        await publisher.stop(timeout=30)
        await spool.close()
    return {"rows": rows, "left": left, "seconds": seconds, "rows_per_s": (rows - left) / seconds}


async def measure(sizes: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-drain-") as tmp, LocalKafka(Path(tmp) / "kafka") as kafka:
        results = []
        for rows in sizes:
            result = await drain_rate(kafka.bootstrap, Path(tmp) / f"spool-{rows}", rows)
            print(f"bench: drained {rows:,} rows in {result['seconds']:.1f} s ({result['rows_per_s']:,.0f}/s)")
            results.append(result)
        return results


def markdown(results: list[dict[str, Any]]) -> str:
    rows = [f"| {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['left']} |" for r in results]
    ratio = results[-1]["rows_per_s"] / results[0]["rows_per_s"]
    return "\n".join(
        [
            "| spooled rows | drain s | rows/s | left |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            f"rate at {results[-1]['rows']:,} rows / rate at {results[0]['rows']:,} rows: **{ratio:.2f}x**"
            " (1.0 is a drain linear in the rows).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000", help="spool sizes to drain, smallest first")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = asyncio.run(measure([int(size) for size in args.sizes.split(",")]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drain.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "drain.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
