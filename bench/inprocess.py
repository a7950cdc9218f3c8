#!/usr/bin/env python3
"""The relay's own Python per webhook, A/B against another commit, with nothing else in the process.

    .venv/bin/python bench/inprocess.py --ref 3cf84aa [--pairs 8] [--requests 4000] [--instructions]

`scripts/bench` measures the relay behind uvicorn, httptools and a real broker: on this shared 2-core host
the same build measured against itself moves by 10% from one round to the next, more than a refactor's
cost. This isolates what a refactor of `relay/` changes: the ASGI app (`create_app`) of each build is
driven by raw ASGI calls (lifespan, then one signed `transaction.completed` per request, each delivery id
new), memory dedupe, and each build's own in-memory fake publisher (tests/fakes.py), so that verification,
parsing, dedupe, the envelope, metrics and the answer all run, and no socket, uvicorn or Kafka does.

Each side runs in a process of its own (the reference from a `git archive` of its commit, bench/run.py's
`checkouts`); the pairs alternate which side goes first, and each figure is the median of the pairs'
CPU µs per request. On this host even that moves by 2x between runs of one build, so `--instructions`
also counts, with valgrind's cachegrind, the instructions each build executes per request: the same bytes,
PYTHONHASHSEED=0, start-up cancelled out by the difference of a 1,200- and a 200-request run. That count
does not move with the host (untraced, or at a ratio of 0 or 1); it weighs every instruction alike (not
cache misses or branches), and covers only the relay's in-process path: the publisher here is the tests'
in-memory one, so relay/kafka/ is not run. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOW = 1775745000
LOW, HIGH = 200, 1200  # the two runs --instructions subtracts
SECRET = "whsec_inprocess_bench"  # noqa: S105 - signs the bench's own requests


def requests_file(path: Path, requests: int) -> None:
    """`requests` signed webhooks, each delivery id new, written once so that both builds serve the same bytes."""
    from tests.helpers import sample, signed_headers  # noqa: PLC0415 - this build's sample bodies

    calls = []
    for _ in range(requests):
        body, delivery_id = sample()
        headers = signed_headers(body, secret=SECRET, timestamp=NOW, delivery_id=delivery_id)
        raw = [[k.lower(), v] for k, v in headers.items()]
        calls.append([body.decode(), [*raw, ["content-length", str(len(body))]]])
    path.write_text(json.dumps(calls))


def drive(path: Path, requests: int, ratio: float | None = None) -> float:
    """In the child: CPU µs per webhook request through this build's app (PYTHONPATH picks the build).
    `ratio`: traced at that sampling ratio, spans exported nowhere (a build with tracing only)."""
    from relay.http.app import create_app  # noqa: PLC0415 - the build under test, from PYTHONPATH
    from relay.settings import Settings  # noqa: PLC0415
    from tests.fakes import FakePublisher  # noqa: PLC0415

    env = {"RELAY_MYTPE_SECRETS": SECRET, "RELAY_DEDUPE_URL": "memory://", "RELAY_LOG_LEVEL": "WARNING"}
    settings, publisher, clock = Settings.from_env(env), FakePublisher(), lambda: float(NOW)
    if ratio is None:
        app = create_app(settings, publisher=publisher, clock=clock)
    else:
        from relay.tracing import TracingConfig  # noqa: PLC0415
        from relay.tracing.otel import Tracer  # noqa: PLC0415

        tracer = Tracer.build(TracingConfig(ratio=ratio))
        app = create_app(settings, publisher=publisher, clock=clock, tracer=tracer)
    loaded = json.loads(path.read_text())[:requests]
    calls = [(body.encode(), [(k.encode(), v.encode()) for k, v in headers]) for body, headers in loaded]
    return asyncio.run(_run(app, calls))


async def _run(app: Any, calls: list[tuple[bytes, list[tuple[bytes, bytes]]]], in_flight: int = 1) -> float:
    """CPU µs per request through `app`, one request at a time, or `in_flight` at once (bench/counted.py:
    so that the publisher batches as it does under load)."""
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    done: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    lifespan = asyncio.create_task(app(scope, startup.get, done.put))
    started = await done.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"startup: {started}")
    statuses: dict[int, int] = {}
    warm = len(calls) // 10 if in_flight == 1 else 0  # in flight: bench/counted.py subtracts a shorter run
    begin = time.process_time()
    if in_flight > 1:
        # `in_flight` workers taking the next request in turn, as 64 connections would. Until 2026-12-03, a task
        # per request waiting on a semaphore, all made at once: driver work that bench/counted.py counted per
        # webhook (unset counted 573.4k instructions per webhook with it, 523.6k without)
        waiting = iter(calls)

        async def worker() -> None:
            for body, headers in waiting:
                status = await _request(app, body, headers, state)
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    else:
        for index, (body, headers) in enumerate(calls):
            if index == warm:
                begin = time.process_time()
            status = await _request(app, body, headers, state)
            statuses[status] = statuses.get(status, 0) + 1
    spent = time.process_time() - begin
    await startup.put({"type": "lifespan.shutdown"})
    await done.get()
    await lifespan
    if set(statuses) != {200}:
        raise RuntimeError(f"answers {statuses}, not all 200")
    return spent / (len(calls) - warm) * 1e6


async def _request(app: Any, body: bytes, headers: list[tuple[bytes, bytes]], state: dict[str, Any]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/mytpe",
        "raw_path": b"/webhooks/mytpe",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": state.copy(),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a disconnect never comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def side(tree: Path, calls: Path, requests: int, *, valgrind: str = "", ratio: float | None = None) -> float:
    """One run of `drive` in a fresh process serving `tree`'s relay and tests: CPU µs per request, or with
    `valgrind` (cachegrind) the instructions the whole process executed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(requests), "--calls", str(calls)]
    command += [] if ratio is None else ["--ratio", str(ratio)]
    if valgrind:
        out = calls.with_suffix(".cachegrind")
        command = [*cachegrind(valgrind, out), *command]
    done = subprocess.run(command, cwd=tree, env=child_env(tree), capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr.strip().splitlines()[-1:]}")
    if not valgrind:
        return float(done.stdout.strip().splitlines()[-1])
    return float(counted(out))


def cachegrind(valgrind: str, out: Path) -> list[str]:
    """The command prefix under which a child's instructions are counted into `out` (no cache simulation)."""
    return [valgrind, "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]


def counted(out: Path) -> int:
    """The instructions a cachegrind run counted, from its output file's summary line."""
    summary = next(line for line in out.read_text().splitlines() if line.startswith("summary:"))
    return int(summary.split()[1])


def child_env(tree: Path) -> dict[str, str]:
    """A measured child's environment: `tree`'s code, the same hash seed in every run, and no bytecode
    written. A child that compiled a module and cached it would spare the next child that work, so a run
    pair would count the compile as per-request cost: the 1,200-request run goes first and, in a fresh
    checkout (a `--ref`, or this tree after an edit), it alone compiled (bench/counted.py once counted about
    26k instructions per webhook too many in a traced run that way)."""
    return {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def instructions(
    trees: dict[str, Path], calls: Path, low: int, high: int, ratios: dict[str, float | None]
) -> dict[str, float]:
    """Instructions per request, by cachegrind: (a run of `high` requests - a run of `low`) / (high - low),
    so that start-up and imports cancel out. The same on any host (PYTHONHASHSEED=0, same bytes), untraced
    or at ratio 0 or 1; between those, which requests are sampled follows the random trace ids."""
    spy = shutil.which("valgrind")
    if spy is None:
        raise SystemExit("bench: --instructions needs valgrind")
    counted = {}
    for name, tree in trees.items():
        runs = [side(tree, calls, count, valgrind=spy, ratio=ratios[name]) for count in (high, low)]
        counted[name] = (runs[0] - runs[1]) / (high - low)
    return counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="", help="the commit to compare this build with (required)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    parser.add_argument("--ratio", type=float, default=None, help="trace this build at that ratio (spans go nowhere)")
    parser.add_argument("--ref-ratio", type=float, default=None, help="trace the --ref build too (one with tracing)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{drive(args.calls, args.child, args.ratio):.3f}")
        return 0
    if not args.ref:
        parser.error("--ref is required")
    if args.instructions and args.requests < HIGH:
        parser.error(f"--instructions counts a run of {HIGH} requests: --requests must be at least that")
    ratios = {"this": args.ratio, "ref": args.ref_ratio}
    sys.path.insert(0, str(ROOT))
    from bench.run import checkouts  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="mytpe-bench-inprocess-") as tmp, checkouts([args.ref], Path(tmp)) as refs:
        calls = Path(tmp) / "calls.json"
        requests_file(calls, args.requests)
        trees = {"this": ROOT, "ref": next(iter(refs.values()))}
        pairs = []
        for index in range(args.pairs):
            order = list(trees.items()) if index % 2 else list(trees.items())[::-1]
            measured = {name: side(tree, calls, args.requests, ratio=ratios[name]) for name, tree in order}
            pairs.append(measured)
            print(f"pair {index + 1}: this {measured['this']:.1f} µs, {args.ref} {measured['ref']:.1f} µs", flush=True)
        counted = instructions(trees, calls, LOW, HIGH, ratios) if args.instructions else {}
    this, ref = (statistics.median(p[name] for p in pairs) for name in ("this", "ref"))
    spread = sorted(p["this"] / p["ref"] for p in pairs)
    print(
        f"CPU µs per webhook, medians of {args.pairs} pairs: this {this:.1f}, {args.ref} {ref:.1f}:"
        f" {this / ref:.3f}x (pairs {spread[0]:.3f} to {spread[-1]:.3f}x)"
    )
    if counted:
        print(
            f"instructions per webhook (cachegrind, 1,200 - 200 requests): this {counted['this']:,.0f},"
            f" {args.ref} {counted['ref']:,.0f}: {counted['this'] / counted['ref']:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
