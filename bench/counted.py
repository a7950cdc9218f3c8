#!/usr/bin/env python3
"""What tracing costs a webhook, counted in instructions through the real publisher, a real broker and the
real OTLP exporter: tracing unset, at a ratio of 0 and at 1, and the 1% that follows from them.

    .venv/bin/python bench/counted.py [--requests 1200] [--in-flight 64] [--dedupe] [--loop uvloop|asyncio]

`scripts/bench --tracing` times four relays on this shared 2-core host, where the same code path measured
against itself moves by 4 to 10% from one run to the next: more than the 5% that issue 26's goal for 1%
allows. This counts instead, with valgrind's cachegrind, the instructions one process executes per webhook
(a run of `--requests` minus a run of 200, so start-up cancels out, after an uncounted run that has the
broker create the topics: before 2026-12-03 the first case counted, unset or memory dedupe, paid for
that, by up to 0.45M instructions per webhook in one run, so the ratios looked closer to 1): this
build's ASGI app on uvloop, the relay's event loop (`--loop asyncio`: asyncio's own, about 40k
instructions more per webhook with memory dedupe and 63k with Redis dedupe; the tracing ratios much
the same), its collector tuned as `serve` tunes it (`tune_gc`; before 2026-12-03, Python's defaults),
driven by raw ASGI calls (bench/inprocess.py's driver, same signed bodies, `--in-flight` at once as the load generator's
64 connections would be, so that records are batched as under load), memory dedupe, the relay's own
KafkaPublisher publishing each record with `acks=all` to a local broker, and with tracing on, the SDK's
batch processor exporting every span by OTLP/HTTP to a counting sink on 127.0.0.1 (bench/otlp_sink.py),
in its thread. How records fall into batches follows the broker's timing, so with more than one in
flight the counts move a little from run to run (run it twice).

A ratio of 0 or 1 decides every webhook the same way, so those counts repeat; 1% is projected from them
(0.99 of the ratio-0 count and 0.01 of the ratio-1 count), not run, because 1% of 1,000 webhooks is a
sample of about ten. uvicorn and httptools are not in the count: they cost the same whatever tracing does,
so the ratios here are lower than the ones a whole relay process would show. Reports, never asserts.

`--dedupe` counts the same path with tracing unset, memory dedupe against Redis dedupe on a real
redis-server (tests/servers.py's LocalRedis): what a shared store costs the relay process per webhook
(Redis's own work is in its process, not counted). The store is emptied before each run: every run sends
the same deliveries, and a run of duplicates costs less (before 2026-12-03 it was not emptied, and Redis
mode counted about 52k instructions per webhook too many).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOW = 200
SETTINGS = {"unset": None, "ratio 0": 0.0, "ratio 1": 1.0}
MEMORY = "memory://"


def drive(
    calls: Path,
    requests: int,
    *,
    bootstrap: str,
    ratio: float | None,
    otlp: str,
    in_flight: int,
    dedupe: str,
    loop: str = "uvloop",
) -> None:
    """In the child: `requests` webhooks through this build's app, publishing to `bootstrap`."""
    from bench.inprocess import NOW, SECRET, _run  # noqa: PLC0415
    from relay import tracing  # noqa: PLC0415
    from relay.http.app import create_app  # noqa: PLC0415
    from relay.http.server import tune_gc  # noqa: PLC0415
    from relay.settings import Settings  # noqa: PLC0415

    env = {
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_DEDUPE_URL": dedupe,
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "counted",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    }
    tracer = None
    if ratio is not None:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
        tracer = tracing.start(tracing.TracingConfig.from_env(otel))
    app = create_app(Settings.from_env(env), clock=lambda: float(NOW), tracer=tracer)
    # Every run holds all the requests of the file, and sends the first `requests`: the collector sees the
    # same data in both runs of a pair (its one full collection in `tune_gc` walks it).
    loaded = [(b.encode(), [(k.encode(), v.encode()) for k, v in h]) for b, h in json.loads(calls.read_text())]
    if len(loaded) < requests:
        raise ValueError(f"{calls} holds {len(loaded)} requests, not {requests}")
    driving = _run(app, loaded[:requests], in_flight)
    # As `serve` does once its app is built: what exists is frozen out of the collector, and the young
    # generation collected every 7,000 allocations. Before 2026-12-03 the count ran at Python's defaults,
    # which the relay process never does: 10.8k instructions per webhook more with tracing unset, 16.9k at
    # ratio 0 (with the driver of then). The request data loaded above is frozen too: the relay never holds it.
    tune_gc()
    if loop == "uvloop":  # the relay's own (relay/http/server.py)
        import uvloop  # noqa: PLC0415

        uvloop.run(driving)
    else:
        asyncio.run(driving)
    if tracer is not None:
        tracer.shutdown(60.0)  # the spans still queued are exported, and counted


def count(
    valgrind: str,
    calls: Path,
    requests: int,
    *,
    bootstrap: str,
    ratio: float | None,
    otlp: str,
    in_flight: int,
    dedupe: str = MEMORY,
    loop: str = "uvloop",
) -> int:
    """The instructions of one child run, by cachegrind."""
    from bench.inprocess import cachegrind, counted  # noqa: PLC0415 - main() has put this tree on the path first

    out = calls.with_suffix(f".{requests}.cachegrind")
    child(
        calls,
        requests,
        bootstrap=bootstrap,
        otlp=otlp,
        in_flight=in_flight,
        dedupe=dedupe,
        loop=loop,
        ratio=ratio,
        spy=cachegrind(valgrind, out),
    )
    return counted(out)


def child(
    calls: Path,
    requests: int,
    *,
    bootstrap: str,
    otlp: str = "",
    in_flight: int,
    dedupe: str = MEMORY,
    loop: str,
    ratio: float | None = None,
    spy: Sequence[str] = (),
) -> None:
    """One run of `drive` in a process of its own, under `spy` (cachegrind) if given.

    The child writes no bytecode (PYTHONDONTWRITEBYTECODE): a child that compiled a module and cached it
    would spare the next child that work, so a run pair would count a compile as per-webhook cost. Seen on
    2026-12-03 in a fresh checkout: the tracing modules, compiled by the first traced run only, added about
    26k instructions per webhook to that count (most likely also why one ratio-0 count that day read
    674,733 where the next two read 649.4k and 649.5k)."""
    command = [*spy, sys.executable, str(Path(__file__).resolve()), "--child", str(requests), "--calls", str(calls)]
    command += ["--bootstrap", bootstrap, "--otlp", otlp, "--in-flight", str(in_flight), "--dedupe-url", dedupe]
    command += ["--loop", loop]
    command += [] if ratio is None else ["--ratio", str(ratio)]
    from bench.inprocess import child_env  # noqa: PLC0415 - main() has put this tree on the path first

    done = subprocess.run(command, cwd=ROOT, env=child_env(ROOT), capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"child: {done.stderr.strip().splitlines()[-3:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--in-flight", type=int, default=64, help="requests in flight at once (1: one at a time)")
    parser.add_argument("--dedupe", action="store_true", help="memory against Redis dedupe, tracing unset")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the event loop (the relay's: uvloop)"
    )
    parser.add_argument("--dedupe-url", default=MEMORY, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    parser.add_argument("--otlp", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child and args.requests <= LOW:
        parser.error(f"--requests must be more than {LOW}: the count subtracts a run of {LOW}")
    if args.child:
        drive(
            args.calls,
            args.child,
            bootstrap=args.bootstrap,
            ratio=args.ratio,
            otlp=args.otlp,
            in_flight=args.in_flight,
            dedupe=args.dedupe_url,
            loop=args.loop,
        )
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench: counting needs valgrind")
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    from localkafka import LocalKafka  # noqa: PLC0415

    from bench.inprocess import requests_file  # noqa: PLC0415
    from tests.servers import LocalRedis  # noqa: PLC0415

    per_webhook: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mytpe-bench-counted-")))
        kafka = stack.enter_context(LocalKafka(tmp / "kafka"))
        calls = tmp / "calls.json"
        requests_file(calls, args.requests)
        cases: dict[str, tuple[float | None, str]]
        if args.dedupe:
            redis = stack.enter_context(LocalRedis(tmp / "redis"))
            cases = {"memory dedupe": (None, MEMORY), "Redis dedupe": (None, redis.url)}
        else:
            cases = {name: (ratio, MEMORY) for name, ratio in SETTINGS.items()}
        _warm(calls, kafka.bootstrap, in_flight=args.in_flight, loop=args.loop)
        for name, (ratio, dedupe) in cases.items():
            per_webhook[name], spans = _per_webhook(valgrind, calls, args, kafka.bootstrap, ratio=ratio, dedupe=dedupe)
            print(f"{name}: {per_webhook[name]:,.0f} instructions per webhook (spans exported: {spans})", flush=True)
    if args.dedupe:
        print(f"Redis / memory dedupe: {per_webhook['Redis dedupe'] / per_webhook['memory dedupe']:.3f}x")
        return 0
    print(ratios(*(per_webhook[name] for name in SETTINGS)))
    return 0


def ratios(unset: float, zero: float, one: float) -> str:
    """Unset against ratio 0, ratio 1 and 1%, projected from them (bench/whole.py reports the same)."""
    projected = 0.99 * zero + 0.01 * one
    return (
        f"unset / ratio 0: {unset / zero:.3f}x; unset / ratio 1: {unset / one:.3f}x;"
        f" unset / 1% (projected, 0.99 x ratio 0 + 0.01 x ratio 1 = {projected:,.0f}): {unset / projected:.3f}x"
    )


def _per_webhook(
    valgrind: str, calls: Path, args: argparse.Namespace, bootstrap: str, *, ratio: float | None, dedupe: str
) -> tuple[float, int | None]:
    """Instructions per webhook (a run of `--requests` minus one of 200), and the spans the sink received."""
    from bench.otlp_sink import OtlpSink  # noqa: PLC0415

    with OtlpSink() as sink:
        runs = []
        for n in (args.requests, LOW):
            _forget(dedupe)  # else the second run's deliveries are the first's duplicates: less work, counted less
            runs.append(
                count(
                    valgrind,
                    calls,
                    n,
                    bootstrap=bootstrap,
                    ratio=ratio,
                    otlp=sink.endpoint,
                    in_flight=args.in_flight,
                    dedupe=dedupe,
                    loop=args.loop,
                )
            )
        return (runs[0] - runs[1]) / (args.requests - LOW), sink.counts.spans


def _warm(calls: Path, bootstrap: str, *, in_flight: int, loop: str) -> None:
    """One uncounted run first: the broker creates the topics and elects their leaders, which the first
    counted run would otherwise pay for (once seen: 1.11M instead of about 0.66M per webhook)."""
    child(calls, LOW, bootstrap=bootstrap, in_flight=in_flight, loop=loop)


def _forget(dedupe: str) -> None:
    """Empty a Redis dedupe store between runs (each run sends the same deliveries); memory starts empty."""
    if dedupe != MEMORY:
        from redis import Redis  # noqa: PLC0415

        with Redis.from_url(dedupe) as client:
            client.flushall()


if __name__ == "__main__":
    sys.exit(main())
