"""Where a target's CPU goes under the bench's load: py-spy samples, summed by stage and by function.

`bench/run.py --profile` records each target's processes during its closed-loop run (py-spy, sampling
without pausing the process; idle threads are left out, so a sample is CPU spent in that stack) and
writes `<name>.txt` (py-spy's collapsed stacks) and `<name>-profile.md` next to the results.

    python bench/profile.py <name>.txt [...]   the same summary for stacks recorded before

A sample's stage is the innermost of its frames that belongs to a known part (STAGES), so the shares
of one target add up to 100%. Compare the shares of two targets of the same run (relay-memory against
relay-redis, or the relay against the floor), not figures across runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# py-spy names the `opentelemetry` namespace package's files from below it; the last two are the batch
# processor's thread (encoding, the HTTP export).
OTEL_FILES: tuple[str, ...] = ("trace/__init__.py", "trace/sampling.py", "trace/span.py", "context/")
OTEL_FILES += ("_shared_internal/", "trace_encoder/", "trace_exporter/")
# (stage, a substring of the frame's file). A sample belongs to the innermost frame that names a part;
# the event loop and its streams only when nothing else does (a write to Redis is Redis's cost).
STAGES: tuple[tuple[str, str], ...] = (
    ("tracing (relay, OpenTelemetry SDK)", "relay/tracing/"),
    *(("tracing (relay, OpenTelemetry SDK)", part) for part in OTEL_FILES),
    ("dedupe: redis-py", "redis/"),
    ("dedupe: relay", "relay/dedupe/"),
    ("kafka: aiokafka", "aiokafka/"),
    ("kafka: relay publisher", "relay/kafka/"),
    ("verify + parse (relay/mytpe)", "relay/mytpe/"),
    ("verify + parse (relay/mytpe)", "hmac.py"),
    ("envelope + routing", "relay/envelope.py"),
    ("envelope + routing", "relay/routing.py"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("spool / sources", "relay/spool/"),
    ("spool / sources", "relay/sources/"),
    ("relay pipeline", "relay/pipeline/"),
    ("relay pipeline", "relay/pipeline.py"),  # before the split: an A/B against an older commit
    ("relay http endpoint", "relay/http/"),
    ("floor handler", "bench/targets.py"),
    ("starlette", "starlette/"),
    ("uvicorn + httptools", "uvicorn/"),
)
LOOP = ("asyncio/", "uvloop/")
LOOP_ITSELF = ("asyncio/runners.py", "asyncio/base_events.py", "uvloop/")


def record(pids: Iterable[int], seconds: float, out: Path, *, rate: int = 250) -> list[subprocess.Popen[bytes]]:
    """Start one py-spy per process for `seconds`; the caller waits for them (see `finish`)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    recorders = []
    for index, pid in enumerate(pids):
        command = [spy, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)), "--rate", str(rate)]
        command += ["--format", "raw", "--nonblocking", "--output", f"{out}.{index}.txt"]
        recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # noqa: S603
    return recorders


def finish(recorders: list[subprocess.Popen[bytes]], out: Path) -> str:
    """Wait for the recorders, join their stacks into `<out>.txt`, and return the summary (markdown)."""
    parts = []
    for index, recorder in enumerate(recorders):
        recorder.wait(120)
        part = Path(f"{out}.{index}.txt")
        if part.exists():
            parts.append(part.read_text())
            part.unlink()
    stacks = "".join(parts)
    Path(f"{out}.txt").write_text(stacks)
    return summary(out.name, stacks.splitlines())


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's raw lines (`frame;frame;… count`, outermost first) as (frames, samples)."""
    samples = []
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def stage(frames: list[str]) -> str:
    if any(marker in frames[-1] for marker in LOOP_ITSELF):  # uvloop's own C code: polling, dispatching
        return "event loop (asyncio, uvloop)"
    for frame in reversed(frames):
        for name, marker in STAGES:
            if marker in frame:
                return name
    if any(marker in frame for frame in frames for marker in LOOP):
        return "event loop (asyncio, uvloop)"
    return "other"


def summary(name: str, lines: Iterable[str], top: int = 25) -> str:
    samples = parse(lines)
    total = sum(count for _, count in samples) or 1
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in samples:
        stages[stage(frames)] += count
        own[frames[-1]] += count
    rows = [f"## {name}: {total} samples", "", "| stage | share |", "|---|---:|"]
    rows += [f"| {key} | {count / total:.1%} |" for key, count in stages.most_common()]
    rows += ["", "| function (self time) | share |", "|---|---:|"]
    rows += [f"| `{key}` | {count / total:.1%} |" for key, count in own.most_common(top)]
    return "\n".join(rows) + "\n"


def stage_costs(profiles: dict[str, tuple[list[str], float]]) -> str:
    """CPU µs per webhook by stage, one column a target: (its stacks, its CPU µs per webhook) by name.
    A stage's µs are its share of the samples times the target's measured CPU per webhook."""
    costs: dict[str, Counter[str]] = {}
    for name, (lines, per_webhook) in profiles.items():
        samples = parse(lines)
        total = sum(count for _, count in samples) or 1
        shares: Counter[str] = Counter()
        for frames, count in samples:
            shares[stage(frames)] += count
        costs[name] = Counter({key: count / total * per_webhook for key, count in shares.items()})
    names = list(costs)
    order = sorted(
        {key for cost in costs.values() for key in cost}, key=lambda key: -max(c[key] for c in costs.values())
    )
    rows = ["| stage (CPU µs per webhook) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows += [f"| {key} | " + " | ".join(f"{costs[n][key]:.1f}" for n in names) + " |" for key in order]
    rows.append("| **total** | " + " | ".join(f"{profiles[n][1]:.1f}" for n in names) + " |")
    return "\n".join(rows) + "\n"


def main() -> int:
    for path in map(Path, sys.argv[1:]):
        print(summary(path.stem, path.read_text().splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
