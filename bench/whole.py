#!/usr/bin/env python3
"""What tracing costs a whole relay process, counted in instructions: `python -m relay serve` (what
`mytpe-relay serve` runs: uvicorn, httptools, the app, the Kafka client, the exporter's thread) under
valgrind's cachegrind, driven over loopback HTTP by the load generator.

    .venv/bin/python bench/whole.py [--requests 1200] [--conns 64] [--mixed 6000]

bench/counted.py counts the app driven in-process, without uvicorn and httptools. Those cost the same
whatever tracing does, so the ratios it gives are lower than a whole relay process's; `scripts/bench
--tracing` times whole processes, but on this shared host its rounds of one target move by more than the
goal's 5%. This counts whole processes instead: for each case (tracing unset, a ratio of 0, a ratio of
1), a relay serves `--requests` webhooks and, in a second process, 200 (closed loop, `--conns`
connections, memory dedupe, a real broker, spans exported by OTLP/HTTP to a counting sink on
127.0.0.1); the difference of the two counts over the difference of the requests is the cost per
webhook, start-up and shutdown cancelled out. At ratio 1 the relay is stopped once the sink has every
span (the batch processor's queue is made large enough to drop none). 1% is projected from ratio 0 and
ratio 1, as bench/counted.py projects it; at a real 1% the batch processor sends a batch every 5 s, not
every 512 spans, so each POST's cost is spread over fewer spans than at ratio 1, and the projection is a
little low. `--mixed N` counts a relay at a real 1% too (N webhooks, against 1,000), and sets it beside the
projection at the share its ratio actually sampled: N of 6000 or more gives some 60 sampled webhooks. A
topic-creating run goes first, uncounted. `OTEL_*` variables of the caller's environment are
not passed on: each case sets its own.

What does not cancel out: a serving process also works while it waits (uvicorn's tick ten times a
second, the relay's own timers), and the longer run waits longer under valgrind. So the relay's
instructions per second while idle are counted too (tracing unset, two idle processes, 5 s and 25 s), and
each case is shown as counted and with that idle rate times the two runs' difference in duration (from
the first request to the stop) taken off. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from localkafka import LocalKafka, free_port  # noqa: E402

from bench.counted import ratios  # noqa: E402
from bench.inprocess import cachegrind  # noqa: E402
from bench.inprocess import counted as instructions_of  # noqa: E402
from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from bench.otlp_sink import OtlpSink  # noqa: E402
from bench.run import PYTHON, Target  # noqa: E402
from bench.span_costs import TREE  # noqa: E402

LOW = 200
CASES = {"unset": None, "ratio 0": "0.0", "ratio 1": "1.0"}
MIXED_LEAST = 6000  # --mixed: some 60 sampled webhooks at 1%
MIXED_LOW = 1000  # --mixed's shorter run: at 1%, 200 webhooks would sample none about one time in eight
IDLE = (5.0, 25.0)


@dataclass
class Run:
    instructions: int
    seconds: float  # from the first request sent to the last answered (or the idle wait)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument(
        "--mixed", type=int, default=0, help="also count a real 1%% relay serving this many webhooks (6000 or more)"
    )
    args = parser.parse_args()
    if args.requests <= LOW:
        parser.error(f"--requests must be more than {LOW}: the count subtracts a run of {LOW}")
    if args.mixed and args.mixed < MIXED_LEAST:
        parser.error(f"--mixed must be {MIXED_LEAST} or more: about {MIXED_LEAST // 100} sampled webhooks")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench: counting needs valgrind")
    for name in [name for name in os.environ if name.startswith("OTEL_")]:  # each case sets its own
        del os.environ[name]
    load = LoadGen.build()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mytpe-bench-whole-")))
        load.templates = write_templates(work)
        kafka = stack.enter_context(LocalKafka(work / "kafka"))
        with _relay(kafka.bootstrap, work, None, spy=()) as target:  # the broker creates the topics
            _send(load, target, LOW, args.conns)
        idle = [_idle(valgrind, kafka.bootstrap, work, seconds) for seconds in IDLE]
        per_second = (idle[1].instructions - idle[0].instructions) / (idle[1].seconds - idle[0].seconds)
        print(f"idle: {per_second:,.0f} instructions per second", flush=True)
        counted: dict[str, float] = {}
        for name, ratio in CASES.items():
            with OtlpSink() as sink:
                high, low = (
                    _count(valgrind, load, kafka.bootstrap, work, requests=n, conns=args.conns, ratio=ratio, sink=sink)
                    for n in (args.requests, LOW)
                )
                spans = sink.counts.spans
            raw, counted[name] = per_webhook(high, low, args.requests - LOW, per_second)
            print(
                f"{name}: {raw:,.0f} instructions per webhook counted, {counted[name]:,.0f} without the idle"
                f" rate over the {high.seconds - low.seconds:.1f} s longer run (spans exported: {spans})",
                flush=True,
            )
        if args.mixed:
            found = mixed(valgrind, load, kafka.bootstrap, work, args, counted=counted, per_second=per_second)
            print(found, flush=True)
    print(ratios(*(counted[name] for name in CASES)))
    return 0


def mixed(
    valgrind: str,
    load: LoadGen,
    bootstrap: str,
    work: Path,
    args: argparse.Namespace,
    *,
    counted: dict[str, float],
    per_second: float,
) -> str:
    """A relay at a real 1%, counted as the other cases, against the projection from ratio 0 and ratio 1 at
    the share of webhooks its ratio actually sampled (the spans the sink received over five per webhook,
    once none has come for 15 s, three times the batch processor's delay). The difference bounds what
    mixing sampled and unsampled webhooks in one process costs in instructions, beside the spread of the
    counts between runs and two possible biases: this run is longer than the other cases' (`--mixed`
    against `--requests` webhooks), and its exporter's POSTs, every 5 s while valgrind slows the process,
    hold fewer spans than a timed relay's. Not
    compared when the 1,000-webhook run sampled none (the sampled path's one-time costs would land in the
    difference) or when the spans received are not whole webhooks'."""
    with OtlpSink() as sink:
        runs, spans = [], []
        for n in (args.mixed, MIXED_LOW):
            before = sink.counts.spans or 0
            runs.append(_count(valgrind, load, bootstrap, work, requests=n, conns=args.conns, ratio="0.01", sink=sink))
            spans.append((sink.counts.spans or 0) - before)
        posts = sink.counts.requests
    _, real = per_webhook(runs[0], runs[1], args.mixed - MIXED_LOW, per_second)
    if spans[1] == 0 or spans[0] <= spans[1] or any(n % TREE for n in spans):
        return f"1% for real: not comparable (spans received: {spans[0]} and {spans[1]}; run it again)"
    share = (spans[0] - spans[1]) / TREE / (args.mixed - MIXED_LOW)
    projected = counted["ratio 0"] + share * (counted["ratio 1"] - counted["ratio 0"])
    return (
        f"1% for real: {real:,.0f} instructions per webhook without the idle rate; {share:.2%} of the webhooks"
        f" sampled ({spans[0]} and {spans[1]} spans, {posts} POSTs in all), so projected from ratio 0 and ratio 1:"
        f" {projected:,.0f}"
        f" ({real - projected:+,.0f}); unset / 1% for real: {counted['unset'] / real:.3f}x"
    )


def per_webhook(high: Run, low: Run, more: int, idle_per_second: float) -> tuple[float, float]:
    """Instructions per webhook as counted (the two runs' difference over the `more` webhooks the first
    served), and without what the relay spends idle over the first run's longer duration."""
    raw = (high.instructions - low.instructions) / more
    return raw, raw - idle_per_second * (high.seconds - low.seconds) / more


def _count(
    valgrind: str,
    load: LoadGen,
    bootstrap: str,
    work: Path,
    *,
    requests: int,
    conns: int,
    ratio: str | None,
    sink: OtlpSink,
) -> Run:
    out = work / f"whole-{ratio}-{requests}.cachegrind"
    before = sink.counts.spans or 0
    started = time.monotonic()
    with _relay(bootstrap, work, ratio, spy=cachegrind(valgrind, out), otlp=sink.endpoint) as target:
        _send(load, target, requests, conns)
        if ratio == "1.0":  # every span exported before the stop, whose export is bounded (5 s)
            _await_spans(sink, before + TREE * requests)
        elif ratio == "0.01":  # how many is not known: until none has come for well over the 5 s delay
            _await_quiet(sink, 15.0)
        seconds = time.monotonic() - started - target.started_in  # the wait for the spans is counted, and timed
    return Run(instructions_of(out), seconds)


def _idle(valgrind: str, bootstrap: str, work: Path, seconds: float) -> Run:
    out = work / f"idle-{seconds}.cachegrind"
    with _relay(bootstrap, work, None, spy=cachegrind(valgrind, out)):
        time.sleep(seconds)
    return Run(instructions_of(out), seconds)


@dataclass
class Timed(Target):
    started_in: float = 0.0  # seconds from the spawn to the first ready answer


@contextlib.contextmanager
def _relay(bootstrap: str, work: Path, ratio: str | None, *, spy: Sequence[str], otlp: str = "") -> Iterator[Timed]:
    """A relay serving on a free port until the block ends (SIGTERM, then its graceful stop)."""
    port = free_port()
    env = {
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_DEDUPE_URL": "memory://",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "whole",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",  # a compile cached by one run would be spared the next (bench/counted.py)
    }
    if ratio is not None:
        queue = str(TREE * 2_000_000)  # none dropped: a dropped span's export would not be counted
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER_ARG": ratio, "OTEL_BSP_MAX_QUEUE_SIZE": queue}
    serve = [*spy, PYTHON, "-m", "relay", "serve"]
    target = Timed(f"whole-{ratio}", [serve], env, [port], "/readyz")
    started = time.monotonic()
    target.start(work, timeout=300.0)  # under valgrind, start-up takes tens of seconds
    target.started_in = time.monotonic() - started
    try:
        yield target
    finally:
        _stop(target)


def _stop(target: Target) -> None:
    """SIGTERM and wait: cachegrind writes its count only when the process exits by itself."""
    for process in target.processes:
        process.terminate()
        process.wait(300)
    target.processes.clear()


def _send(load: LoadGen, target: Target, requests: int, conns: int) -> None:
    result = load.run(target.urls, mode="closed", conns=conns, duration=900, warmup=0, limit=requests)
    if result["statuses"] != {"200": requests}:
        raise RuntimeError(f"{target.name}: answers {result['statuses']}, not {requests} times 200")


def _await_quiet(sink: OtlpSink, quiet: float, timeout: float = 300.0) -> None:
    deadline, last, since = time.monotonic() + timeout, sink.counts.spans, time.monotonic()
    if last is None:
        raise RuntimeError("the sink cannot count spans: install the otel extra (opentelemetry-proto)")
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sink still receives spans after {timeout:.0f} s")
        time.sleep(0.1)
        if sink.counts.spans != last:
            last, since = sink.counts.spans, time.monotonic()


def _await_spans(sink: OtlpSink, expected: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while (sink.counts.spans or 0) < expected:
        if sink.counts.spans is None:
            raise RuntimeError("the sink cannot count spans: install the otel extra (opentelemetry-proto)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sink has {sink.counts.spans} of {expected} spans after {timeout:.0f} s")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
