#!/usr/bin/env python3
"""The cost of many sources: one relay serving 1 source against one serving 200, in one run.

    scripts/bench --sources [--duration 8] [--rounds 2] [--out bench/results]

Both relays (memory dedupe, one broker) are driven by the same load generator at saturation (closed
loop), on the path of one source; the 200-source relay's file gives each source its own secret, and
the load goes to the last one. A source is found by its path, so the ratio should be about 1: were
every secret tried, 200 HMACs per request would show. The legacy `RELAY_MYTPE_SECRETS` path is
measured too, as the baseline of this change. Rounds alternate the targets to spread the machine's
noise; each target's figure is its median round. Reports, never asserts.
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

MANY = 200


def sources_file(path: Path, count: int) -> Path:
    """`count` sources, each with its own secret; the last one's is the load generator's."""
    lines = ["sources:"]
    for index in range(count):
        secret = SECRET if index == count - 1 else f"whsec_{index:048x}"
        lines.append(f"  - name: source-{index}\n    secrets: [{secret}, whsec_{index + 10**6:048x}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def relays(bootstrap: str, work: Path) -> list[Target]:
    serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
    base = {
        "RELAY_HOST": "127.0.0.1",
        "RELAY_DEDUPE_URL": "memory://",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "bench",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    }
    targets = [Target("legacy-env", [serve], {**base, "RELAY_MYTPE_SECRETS": SECRET}, [free_port()], "/readyz")]
    for count in (1, MANY):
        file = sources_file(work / f"sources-{count}.yaml", count)
        targets.append(
            Target(
                f"{count}-source{'s' if count > 1 else ''}",
                [serve],
                {**base, "RELAY_SOURCES_FILE": str(file)},
                [free_port()],
                "/readyz",
                path=f"/webhooks/mytpe/source-{count - 1}",
            )
        )
    for target in targets:
        target.env["RELAY_PORT"] = str(target.ports[0])
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
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-sources-") as tmp:
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
                        if set(run["statuses"]) != {"200"}:
                            raise RuntimeError(f"{target.name}: answers {run['statuses']}, not all 200")
                        runs.setdefault(target.name, []).append(run)
                        print(f"bench: {target.name} round {round_ + 1}: {run['rps']:.0f} req/s", flush=True)
            finally:
                for target in targets:
                    target.stop()
    summary = summarise(runs, duration=args.duration, conns=args.conns, rounds=args.rounds)
    (args.out / "sources.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "sources.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def summarise(runs: dict[str, list[dict[str, Any]]], **context: Any) -> dict[str, Any]:
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
        "ratio_200_to_1": table["200-sources"]["rps"] / table["1-source"]["rps"],
        "ratio_1_to_legacy": table["1-source"]["rps"] / table["legacy-env"]["rps"],
        "cpu_ratio_200_to_1": table["200-sources"]["cpu_per_10k"] / table["1-source"]["cpu_per_10k"],
    }


def markdown(summary: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {t['rps']:,.0f} | {' / '.join(f'{r:,.0f}' for r in t['rps_each'])} | {t['p99_ms']:.2f}"
        f" | {t['cpu_per_10k']:.2f} |"
        for name, t in summary["targets"].items()
    ]
    return "\n".join(
        [
            "| relay | req/s (median) | each round | p99 ms (closed loop) | relay CPU s/10k |",
            "|---|---:|---|---:|---:|",
            *rows,
            "",
            f"200 sources / 1 source throughput: **{summary['ratio_200_to_1']:.3f}x**"
            f" (CPU per request: {summary['cpu_ratio_200_to_1']:.3f}x);"
            f" 1 source (file) / RELAY_MYTPE_SECRETS: {summary['ratio_1_to_legacy']:.3f}x"
            f" ({summary['rounds']} alternated rounds of {summary['duration']:g} s, {summary['conns']} connections).",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
