"""Rounds of bench/run.py's targets: each figure the median round, and issue 28's goal ratios round by round.

One pass over the targets measures each at a different moment of a shared, noisy host, and between
passes the targets moved by different factors (docs/performance.md, "Cut again"). With `--rounds N`
the targets are measured N times, in a different order each round (`order`), at the same open-loop
rates; each target's figures are then the median of its rounds, and the goal ratios are given for every
round, so a reader sees their spread and not one draw.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

FIGURES = (
    "rps",
    "cpu_per_10k",
    "kafka_cpu_per_10k",
    "redis_cpu_per_10k",
    "kafka_batches_per_webhook",
    "kafka_records_per_batch",
    "peak_rss_mib",
)
LATENCIES = ("rate", "rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def order(names: list[str], round_index: int) -> list[str]:
    """The targets of round `round_index`: the first round as given (bare first: it sets the rates); the
    next ones step through the list by each stride coprime with its length in turn, then start one place
    further, so that neither a target's place nor the one measured before it stays the same (a rotation
    alone keeps relay-redis right after relay-memory, and any carry-over between them, in every round)."""
    count = len(names)
    strides = [k for k in range(1, count) if math.gcd(k, count) == 1] or [1]
    stride, start = strides[round_index % len(strides)], round_index // len(strides)
    return [names[(start + i * stride) % count] for i in range(count)]


def median_run(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's rounds as one run: each figure the median of its rounds, an open-loop rate kept only
    where every round served it (a round past capacity skips it), errors summed over the rounds."""
    figures = [key for key in FIGURES if all(key in r for r in rounds)]  # Redis's CPU: where it was read
    run: dict[str, Any] = {key: statistics.median(r[key] for r in rounds) for key in figures}
    run.update(_errors_summed(rounds))
    served = set.intersection(*(set(r["open"]) for r in rounds))
    run["open"] = {}
    for key in sorted(served, key=float):
        at = [r["open"][key] for r in rounds]
        run["open"][key] = {name: statistics.median(a[name] for a in at) for name in LATENCIES}
        run["open"][key].update(_errors_summed(at))
    run["rounds"] = len(rounds)
    return run


def _errors_summed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {"statuses": statuses, "io_errors": sum(run["io_errors"] for run in runs)}


def goals(round_runs: dict[str, dict[str, Any]], *, at: str) -> dict[str, float | None]:
    """Issue 28's ratios in one round (None where a target is missing or was past capacity at `at`):
    relay-redis / relay-memory in throughput; relay-redis's p99 / naive's at `at`, with the share of
    naive's own capacity that rate asked of it; relay-memory / floor in throughput."""
    memory, redis = round_runs.get("relay-memory"), round_runs.get("relay-redis")
    naive, floor = round_runs.get("naive"), round_runs.get("floor")
    row: dict[str, float | None] = {"redis/memory": None, "redis p99/naive p99": None, "naive load": None}
    row["memory/floor"] = memory["rps"] / floor["rps"] if memory and floor else None
    if memory and redis:
        row["redis/memory"] = redis["rps"] / memory["rps"]
    if naive and at in naive["open"]:
        row["naive load"] = naive["open"][at]["rate"] / naive["rps"]
        if redis and at in redis["open"]:
            row["redis p99/naive p99"] = redis["open"][at]["p99_ms"] / naive["open"][at]["p99_ms"]
    return row


def markdown(rows: list[dict[str, float | None]], *, at: str) -> str:
    """The goal ratios of every round, and their median over the rounds that have them."""

    def cell(value: float | None, form: str) -> str:
        """Rounded away from each goal: a ratio that misses it by more than 1e-9 never reads as one that meets
        it (0.7996 is 0.799, not 0.800, against a goal of at least 0.8; a p99 ratio of 1.501 is 1.51, not
        1.50); the 1e-9 absorbs float error (1.001 * 1000 is 1000.9999999999999)."""
        if value is None:
            return "-"
        if not math.isfinite(value):
            return str(value)  # nan, inf: floor and ceil cannot take them
        if form == "floor":
            return f"{math.floor(value * 1000 + 1e-9) / 1000:.3f}"
        if form == "ceil":
            return f"{math.ceil(value * 100 - 1e-9) / 100:.2f}"
        return format(value, form)

    share = f"{float(at):.0%}"
    lines = [
        f"Issue 28's goals, round by round (-: a target missing, or past its capacity at {share} of bare):",
        "",
        f"| round | redis/memory req/s (≥ 0.85) | redis p99 / naive p99 at {share} of bare (≤ 1.5) "
        f"| naive's load there | memory/floor req/s (≥ 0.8) |",
        "|---|---:|---:|---:|---:|",
    ]
    keys = ("redis/memory", "redis p99/naive p99", "naive load", "memory/floor")
    forms = ("floor", "ceil", ".0%", "floor")  # the throughput goals are minimums, the tail's a maximum
    for number, row in enumerate(rows, 1):
        lines.append(f"| {number} | " + " | ".join(cell(row[k], f) for k, f in zip(keys, forms, strict=True)) + " |")
    medians = []
    for key, form in zip(keys, forms, strict=True):
        values = [value for row in rows if (value := row[key]) is not None]
        medians.append(cell(statistics.median(values) if values else None, form))
    lines.append("| median of the rounds' ratios | " + " | ".join(medians) + " |")
    return "\n".join(lines) + "\n"
