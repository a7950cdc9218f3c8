"""Where an open loop's slow answers sit in time, and what each target had left to drain them with.

bench/loadgen's `-timeline` writes each answer of the measured window as "<µs from the window's start to
its scheduled send> <latency µs>". An answer at or above the run's p99 is slow. Slow answers spread over
the run point at a steady cost; slow answers packed into a few episodes (adjacent 50 ms windows that hold
one) point at moments when the target fell behind and then drained its backlog. The windows start at the
measured window's start, not at any answer: two slow answers 51 ms apart may fall in adjacent windows
(one episode) or not (two); and three episodes or fewer hold all the slow answers by construction. A
backlog drains at the target's capacity less the rate it is sent, so each target's headroom (closed-loop
req/s less the rate) is reported beside its episodes (docs/performance.md, "Where the tail comes from").
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW_US = 50_000
LARGEST = 3  # the episodes whose share of the slow answers is reported


@dataclass(frozen=True)
class Episodes:
    slow: int  # answers at or above the run's p99
    episodes: int  # runs of adjacent windows that hold a slow answer
    largest_share: float  # the share of the slow answers in the LARGEST largest episodes


def read(path: Path) -> list[tuple[int, int]]:
    """A timeline file's (send µs, latency µs) pairs."""
    pairs = []
    for line in path.read_text().splitlines():
        sent, latency = line.split()
        pairs.append((int(sent), int(latency)))
    return pairs


def p99(latencies: list[int]) -> int:
    """The 99th percentile as bench/loadgen computes it (nearest rank, rounded)."""
    ordered = sorted(latencies)
    index = min(max(int(0.99 * len(ordered) + 0.5) - 1, 0), len(ordered) - 1)
    return ordered[index]


def episodes(pairs: list[tuple[int, int]]) -> Episodes:
    """The slow answers of a timeline (at or above its p99), grouped into episodes."""
    if not pairs:
        return Episodes(0, 0, 0.0)
    threshold = p99([latency for _, latency in pairs])
    counts: dict[int, int] = {}
    for sent, latency in pairs:
        if latency >= threshold:
            counts[sent // WINDOW_US] = counts.get(sent // WINDOW_US, 0) + 1
    sizes: list[int] = []
    previous = None
    for window in sorted(counts):
        if previous is not None and window == previous + 1:
            sizes[-1] += counts[window]
        else:
            sizes.append(counts[window])
        previous = window
    slow = sum(sizes)
    return Episodes(slow, len(sizes), sum(sorted(sizes, reverse=True)[:LARGEST]) / slow)


def markdown(passes: list[dict[str, dict[str, Any]]], *, at: str) -> str:
    """For every target open-looped at `at` in every round: the medians of its busy share, CPU and records per
    Kafka batch there (beside its closed loop's), its headroom, and its episodes round by round."""
    names = [name for name in passes[0] if all(at in p.get(name, {}).get("open", {}) for p in passes)]
    names = [name for name in names if all("slow_episodes" in p[name]["open"][at] for p in passes)]
    if not names:
        return ""
    share = f"{float(at):.0%}"
    lines = [
        f"The open loop at {share} of bare, where the tail goal is read (bench/tail.py; medians of the rounds, "
        "the closed loop's figure after the slash):",
        "",
        "| target | CPU busy | CPU s / 10k | records / Kafka batch | headroom: req/s at saturation less the rate "
        f"| slow episodes, each round | share of p99-or-worse answers in the {LARGEST} largest |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name in names:
        runs = [p[name] for p in passes]
        opened = [run["open"][at] for run in runs]
        per_batch = "kafka_records_per_batch"
        batches = f"{_median(opened, per_batch, '.2f')} / {_median(runs, per_batch, '.2f')}"
        lines.append(
            f"| {name} | {_median(opened, 'busy', '.0%')} "
            f"| {_median(opened, 'cpu_per_10k', '.2f')} / {_median(runs, 'cpu_per_10k', '.2f')} "
            f"| {batches} "
            f"| {statistics.median(run['rps'] - o['rate'] for run, o in zip(runs, opened, strict=True)):,.0f} "
            f"| {' / '.join(str(o['slow_episodes']) for o in opened)} "
            f"| {_median(opened, 'slow_in_largest', '.0%')} |"
        )
    return "\n".join(lines) + "\n"


def _median(runs: list[dict[str, Any]], key: str, form: str) -> str:
    values = [run[key] for run in runs if key in run]
    return format(statistics.median(values), form) if values else "-"
