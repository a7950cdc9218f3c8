#!/usr/bin/env python3
"""The cost of the spool, in one run: a relay with RELAY_SPOOL_DIR against one without, Kafka healthy;
then the spooled path alone, Kafka stopped.

    scripts/bench --spool [--duration 8] [--rounds 3] [--out bench/results]

With Kafka healthy the spool is off the hot path (a record is spooled only when Kafka has not
acknowledged it within RELAY_SPOOL_AFTER_SECONDS), so the ratio should be about 1. With Kafka
stopped every answer waits for a group-committed SQLite transaction (fsync): records/s and p99 are
then bound by the disk. Rounds alternate the targets; each figure is the median round. Reports, never
asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, free_port  # noqa: E402

from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from bench.run import PYTHON, Target, measure  # noqa: E402


def relays(bootstrap: str, work: Path) -> list[Target]:
    serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
    base = {
        "RELAY_HOST": "127.0.0.1",
        "RELAY_DEDUPE_URL": "memory://",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "bench",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_MAX_IN_FLIGHT": "4096",
    }
    targets = []
    for name, extra in (("no-spool", {}), ("spool", {"RELAY_SPOOL_DIR": str(work / "spool")})):
        port = free_port()
        targets.append(Target(name, [serve], {**base, **extra, "RELAY_PORT": str(port)}, [port], "/readyz"))
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target, alternated")
    parser.add_argument("--conns", type=int, default=64, help="connections of the closed loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = LoadGen.build()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-spool-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        with LocalKafka(work / "kafka", fast_start=False) as kafka:
            kafka_pid = int(kafka.pid_file.read_text())
            targets = relays(kafka.bootstrap, work)
            for target in targets:
                target.start(work)
            try:
                for round_ in range(args.rounds):
                    for target in targets if round_ % 2 == 0 else reversed(targets):
                        run = measure(target, load, kafka_pid, args.duration, args.conns)
                        runs.setdefault(target.name, []).append(run)
                        print(f"bench: {target.name} round {round_ + 1}: {run['rps']:.0f} req/s", flush=True)
                kafka.stop()  # now every record of the spool relay is spooled
                spooled = targets[1]
                load.run(spooled.urls, mode="closed", conns=args.conns, duration=3, warmup=0)  # into the spool
                down = load.run(spooled.urls, mode="closed", conns=args.conns, duration=args.duration, warmup=0)
                print(f"bench: spooling, Kafka down: {down['rps']:.0f} req/s, statuses {down['statuses']}", flush=True)
            finally:
                for target in targets:
                    target.stop()
    summary = summarise(runs, down, duration=args.duration, conns=args.conns, rounds=args.rounds)
    (args.out / "spool.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "spool.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def summarise(runs: dict[str, list[dict[str, Any]]], down: dict[str, Any], **context: Any) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[name]))

    table: dict[str, dict[str, Any]] = {
        name: {
            "rps": median(name, "rps"),
            "rps_each": [run["rps"] for run in runs[name]],
            "p99_ms": median(name, "p99_ms"),
            "cpu_per_10k": median(name, "cpu_per_10k"),
        }
        for name in runs
    }
    return {
        **context,
        "targets": table,
        "ratio_spool_to_none": table["spool"]["rps"] / table["no-spool"]["rps"],
        "kafka_down": {
            "rps": down["rps"],
            "p50_ms": down["p50_ms"],
            "p99_ms": down["p99_ms"],
            "statuses": down["statuses"],
        },
    }


def markdown(summary: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {t['rps']:,.0f} | {' / '.join(f'{r:,.0f}' for r in t['rps_each'])} | {t['p99_ms']:.2f}"
        f" | {t['cpu_per_10k']:.2f} |"
        for name, t in summary["targets"].items()
    ]
    down = summary["kafka_down"]
    return "\n".join(
        [
            "| relay, Kafka healthy | req/s (median) | each round | p99 ms (closed loop) | relay CPU s/10k |",
            "|---|---:|---|---:|---:|",
            *rows,
            "",
            f"spool / no spool throughput, Kafka healthy: **{summary['ratio_spool_to_none']:.3f}x**"
            f" ({summary['rounds']} alternated rounds of {summary['duration']:g} s, {summary['conns']} connections).",
            "",
            f"Kafka stopped, every answer spooled (group commit, fsync): **{down['rps']:,.0f} records/s**,"
            f" p50 {down['p50_ms']:.2f} ms, p99 {down['p99_ms']:.2f} ms; answers {down['statuses']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
