"""Turn one benchmark run into ratios, a Markdown table and a latency-vs-load plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

RELAY = "relay-memory"


PINNED = " Pinned: each target alone on CPU 1; the broker, Redis, the generator and the publisher alone on CPU 0."


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "kernel": platform.release()}


def summarise(
    runs: dict[str, dict[str, Any]], *, half: float, producer: dict[str, Any], **context: Any
) -> dict[str, Any]:
    """The runs, plus the three ratios the issue sets targets for (all from this one run)."""
    ratios: dict[str, float] = {}
    bare, naive, relay = runs.get("bare"), runs.get("naive"), runs.get(RELAY)
    if bare and relay:
        ratios["relay/bare throughput"] = relay["rps"] / bare["rps"]
        bare_half, relay_half = bare["open"].get(str(half)), relay["open"].get(str(half))
        if bare_half and relay_half:
            ratios["relay/bare p99 at half load"] = relay_half["p99_ms"] / bare_half["p99_ms"]
    if naive and relay:
        ratios["relay/naive throughput"] = relay["rps"] / naive["rps"]
    floor, redis = runs.get("floor"), runs.get("relay-redis")
    if floor and relay:
        ratios["relay/floor throughput"] = relay["rps"] / floor["rps"]
        ratios["relay/floor CPU per webhook"] = relay["cpu_per_10k"] / floor["cpu_per_10k"]
    if redis and relay:
        ratios["relay-redis/relay-memory throughput"] = redis["rps"] / relay["rps"]
        redis_half, relay_half = redis["open"].get(str(half)), relay["open"].get(str(half))
        if redis_half and naive and naive["open"].get(str(half)):
            ratios["relay-redis/naive p99 at half load"] = redis_half["p99_ms"] / naive["open"][str(half)]["p99_ms"]
    for name, run in runs.items():
        if relay and name.startswith(f"{RELAY}@"):  # --ref: today's relay against that commit's
            ratios[f"{RELAY}/{name} throughput"] = relay["rps"] / run["rps"]
            ratios[f"{RELAY}/{name} CPU per webhook"] = relay["cpu_per_10k"] / run["cpu_per_10k"]
    if relay and runs.get("relay-redis-x2") and runs.get("relay-redis"):
        ratios["2 processes/1 process (Redis dedupe)"] = runs["relay-redis-x2"]["rps"] / runs["relay-redis"]["rps"]
    return {"context": {**context, "half": half}, "runs": runs, "ratios": ratios, "producer": producer}


def _errors(run: dict[str, Any]) -> int:
    failed = sum(count for status, count in run["statuses"].items() if not status.startswith("2"))
    return int(failed + run["io_errors"])


def markdown(summary: dict[str, Any]) -> str:
    context, runs = summary["context"], summary["runs"]
    half = str(context["half"])
    rate = next((run["open"][half]["rate"] for run in runs.values() if half in run["open"]), 0)
    m = context["machine"]
    lines = [
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}. "
        f"Closed loop: {context['conns']} connections, {context['duration']:g} s measured after a 3 s warm-up. "
        f"Latency: open loop at {rate:.0f} req/s ({float(half):.0%} of the bare ceiling), measured from each "
        "request's scheduled send time." + (PINNED if context.get("pinned") else ""),
        "",
        "| target | req/s at saturation | p50 ms | p99 ms | p99.9 ms | CPU s / 10k | broker CPU s / 10k "
        "| records / Kafka batch | Redis CPU s / 10k | peak RSS MiB | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        at = run["open"].get(half)
        latency = f"{at['p50_ms']:.2f} | {at['p99_ms']:.2f} | {at['p999_ms']:.2f}" if at else "over capacity | | "
        errors = _errors(run) + (_errors(at) if at else 0)
        redis = f"{run['redis_cpu_per_10k']:.2f}" if "redis_cpu_per_10k" in run else "-"
        batched = f"{run['kafka_records_per_batch']:.2f}" if run.get("kafka_records_per_batch") else "-"
        lines.append(
            f"| {name} | {run['rps']:.0f} | {latency} | {run['cpu_per_10k']:.2f} | {run['kafka_cpu_per_10k']:.2f} "
            f"| {batched} | {redis} | {run['peak_rss_mib']:.0f} | {errors} |"
        )
    lines += ["", "Latency at each open-loop rate, p50 / p99 / p99.9 ms (-: over the target's capacity):", ""]
    rates = sorted({key for run in runs.values() for key in run["open"]}, key=float)
    lines.append("| target | " + " | ".join(f"{float(r):.0%} of bare" for r in rates) + " |")
    lines.append("|---|" + "---:|" * len(rates))
    for name, run in runs.items():
        cells = []
        for key in rates:
            at = run["open"].get(key)
            cells.append(f"{at['p50_ms']:.2f} / {at['p99_ms']:.2f} / {at['p999_ms']:.2f}" if at else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    producer = summary["producer"]
    lines += [
        "",
        f"The relay's publisher alone (bench/producer.py: KafkaPublisher, same broker, 64 publishes in flight): "
        f"{producer['records_per_s']:.0f} records/s, {producer['cpu_us_per_record']:.1f} CPU µs per record "
        f"({producer['cpu_us_per_record'] / 100:.2f} CPU s / 10k).",
    ]
    rounds = max((run.get("rounds", 1) for run in runs.values()), default=1)
    if rounds > 1:
        lines[0] += f" Each figure is the target's median over {rounds} rounds (bench/rounds.py)."
    label = "ratio (same run)" if rounds == 1 else "ratio of the medians (same run)"
    lines += ["", f"| {label} | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in summary["ratios"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - a benchmark-only dependency, loaded when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, run in summary["runs"].items():
        points = sorted((r["rate"], r["p99_ms"], r["p50_ms"]) for r in run["open"].values())
        if not points:
            continue
        rates = [p[0] for p in points]
        (line,) = axes.plot(rates, [p[1] for p in points], marker="o", label=f"{name} p99")
        axes.plot(rates, [p[2] for p in points], linestyle="--", color=line.get_color(), alpha=0.6)
    axes.set_xlabel("offered load (requests/s, open loop)")
    axes.set_ylabel("latency (ms, log): p99 solid, p50 dashed")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title("mytpe-relay vs the bare stack and a naive handler")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    """Render results.md and latency.png again from a results.json (no new measurement)."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    source = Path(sys.argv[1])
    summary = json.loads(source.read_text())
    (source.parent / "results.md").write_text(markdown(summary))
    plot(summary, source.parent / "latency.png")


if __name__ == "__main__":
    main()
