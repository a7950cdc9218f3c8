#!/usr/bin/env python3
"""Memory soak: a million distinct deliveries through one relay with in-memory dedupe.

    scripts/bench --soak [--count 1000000] [--cap 500000]

Starts a real Kafka broker, serves `mytpe-relay` with `RELAY_DEDUPE_MAX_ENTRIES=--cap`, and sends
--count signed webhooks, each with its own delivery id, with the same generator as bench/run.py. At
each checkpoint (100k, the cap, then every further step up to --count) it reads the relay's RSS from
/proc and `mytpe_relay_dedupe_entries` from /metrics. The entry count must stop at the cap and the
RSS must stop growing with it: that is the bound. Writes soak.json and soak.md under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, free_port  # noqa: E402

from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from bench.run import Target, peak_rss_mib  # noqa: E402

_ENTRIES = re.compile(rb"^mytpe_relay_dedupe_entries (\S+)$", re.MULTILINE)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dedupe_entries(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        found = _ENTRIES.search(answer.read())
    return int(float(found.group(1))) if found else -1


def checkpoints(count: int, cap: int) -> list[int]:
    marks = {min(100_000, count), min(cap, count), count}
    step = max(count // 4, 1)
    marks |= {n for n in range(step, count, step) if n > cap}
    return sorted(marks)


def soak(load: LoadGen, relay: Target, count: int, cap: int, conns: int) -> list[dict[str, Any]]:
    """Send `count` distinct deliveries, reading memory and dedupe entries at each checkpoint."""
    pid, port = relay.processes[0].pid, relay.ports[0]
    rows: list[dict[str, Any]] = [{"sent": 0, "rss_mib": rss_mib(pid), "entries": dedupe_entries(port), "non_2xx": 0}]
    sent = 0
    for mark in checkpoints(count, cap):
        result = load.run(relay.urls, mode="closed", conns=conns, duration=3600, warmup=0, limit=mark - sent)
        sent = mark
        failed = sum(n for status, n in result["statuses"].items() if not status.startswith("2"))
        row = {
            "sent": mark,
            "rss_mib": rss_mib(pid),
            "peak_rss_mib": peak_rss_mib(pid),
            "entries": dedupe_entries(port),
            "rps": result["rps"],
            "non_2xx": failed + result["io_errors"],
        }
        rows.append(row)
        print(f"soak: {json.dumps(row)}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--cap", type=int, default=500_000, help="RELAY_DEDUPE_MAX_ENTRIES for the run")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = LoadGen.build()
    with tempfile.TemporaryDirectory(prefix="mytpe-soak-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        with LocalKafka(work / "kafka", fast_start=False) as kafka:
            port = free_port()
            env = {
                "RELAY_MYTPE_SECRETS": SECRET,
                "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
                "RELAY_HOST": "127.0.0.1",
                "RELAY_PORT": str(port),
                "RELAY_DEDUPE_MAX_ENTRIES": str(args.cap),
                "RELAY_LOG_LEVEL": "WARNING",
            }
            relay = Target("relay-memory", [[str(Path(sys.executable).parent / "mytpe-relay"), "serve"]], env, [port])
            relay.start(work)
            try:
                rows = soak(load, relay, args.count, args.cap, args.conns)
            finally:
                relay.stop()
    summary = {"count": args.count, "cap": args.cap, "rows": rows}
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['count']:,} distinct deliveries, `RELAY_DEDUPE_MAX_ENTRIES={summary['cap']:,}`.",
        "",
        "| deliveries sent | RSS MiB | dedupe entries | non-2xx |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['sent']:,} | {r['rss_mib']:.0f} | {r['entries']:,} | {r['non_2xx']} |" for r in summary["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
